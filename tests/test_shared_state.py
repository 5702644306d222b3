"""Breaker state shared through Redis (``vg.RedisStorage``): circuits in many processes act as one.

Each test runs its own throwaway ``redis-server`` on loopback (skipped when it is not installed,
a failure under ``VENDORGUARD_REQUIRE_SERVICES=1``) and its own namespace. Inside this process,
separate ``Circuit`` objects for the same vendor, each with its own ``RedisStorage``, stand for
separate processes (vendor names are unique per process); the acceptance test at the end runs
real processes against a fake HTTP vendor.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests import shared_child
from tests.conftest import sample, wait_until
from tests.integrations.fakehttp import Answer, FakeVendor
from tests.services import RedisServer, require_binary
from vendorguard.breaker import REJECT, Circuit
from vendorguard.shared import Snapshot

REFRESH = 0.05
"""The shortest refresh allowed: the in-process tests wait for other circuits' reads."""
SEEN = REFRESH + 0.5
"""How long another circuit may take to see a change: one refresh, plus slack for a loaded
machine (a read every ``REFRESH`` seconds sees it much sooner)."""
QUIET = 5.0
"""The refresh of a circuit the test drives itself and checks at once: its reader does not run
during the test. (A read that races a call in the same process is adopted after the call and
undoes it: see the test_a_read_older_than_* tests.)"""
CALL_BOUND = 0.5
"""The longest a guarded call may take when Redis hangs (each Redis call is bounded by the
storage's 50 ms timeout)."""


class VendorDown(Exception):
    """The vendor's own failure."""


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server on 127.0.0.1 that the test may stop and start again."""
    with RedisServer(require_binary("redis-server")) as server:
        yield server


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace of the test's own (from its name, plus a random part)."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"t-{name}-{uuid.uuid4().hex[:8]}"


class Peers:
    """Circuits standing for separate processes: each with its own RedisStorage, all on one
    namespace, all for the vendor ``acme``."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.key = f"{namespace}:acme:acme"
        self.storages: list[vg.RedisStorage] = []
        self._admin = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def storage(self, *, refresh: float = REFRESH, **options: Any) -> vg.RedisStorage:
        storage = vg.RedisStorage(self.url, namespace=self.namespace, refresh=refresh, **options)
        self.storages.append(storage)
        return storage

    def circuit(self, *, failures: int = 3, reset_after: float = 30.0, half_open_calls: int = 1,
                refresh: float = REFRESH) -> Circuit:
        """Another process's circuit (it reads the shared state as it is built)."""
        policy = vg.Breaker(failures=failures, reset_after=reset_after,
                            half_open_calls=half_open_calls, storage=self.storage(refresh=refresh))
        return Circuit(policy, vendor="acme", name="acme")

    def shared(self) -> dict[str, str]:
        """The circuit's shared state as Redis holds it (a field never written has the
        value the scripts assume for it)."""
        raw = self._admin.hgetall(self.key)
        return {"state": "closed", "failures": "0", "trials": "0", "override": "",
                **{k.decode(): v.decode() for k, v in raw.items()}}

    def close(self) -> None:
        for storage in self.storages:
            storage.close()
        self._admin.close()


@pytest.fixture
def peers(redis_server: RedisServer, namespace: str) -> Iterator[Peers]:
    made = Peers(redis_server.url, namespace)
    yield made
    made.close()


def fail(circuit: Circuit, times: int = 1) -> None:
    """Make ``times`` admitted calls that fail."""
    for _ in range(times):
        gen = circuit.admit()
        assert gen != REJECT, f"rejected while {circuit.state}"
        circuit.failure(gen, VendorDown("down"), None)


def succeed(circuit: Circuit) -> None:
    """Make one admitted call that succeeds."""
    gen = circuit.admit()
    assert gen != REJECT, f"rejected while {circuit.state}"
    circuit.success(gen, 0.001)


def all_reach(circuits: list[Circuit], state: str, timeout: float = SEEN) -> None:
    """Wait (bounded) until every circuit is in ``state``."""
    assert wait_until(lambda: all(c.state == state for c in circuits), timeout), \
        f"not all {state} within {timeout:g} s: {[c.state for c in circuits]}"


def half_open(peers: Peers, holders: int, *, reset_after: float, half_open_calls: int = 1
              ) -> tuple[list[Circuit], Circuit]:
    """Circuits whose shared circuit opened ``reset_after`` seconds ago: ``holders`` quiet
    ones that will take the trials, and the one that opened it (an observer)."""
    opener = peers.circuit(failures=1, reset_after=reset_after, half_open_calls=half_open_calls)
    fail(opener)
    assert opener.state == "open"
    made = [peers.circuit(failures=1, reset_after=reset_after, half_open_calls=half_open_calls,
                          refresh=QUIET) for _ in range(holders)]
    assert [c.state for c in made] == ["open"] * holders  # read as they were built
    expired([*made, opener], reset_after)
    return made, opener


def expired(circuits: list[Circuit], reset_after: float) -> None:
    """Wait (bounded) until every open circuit's time is up: the next call asks for a trial."""
    assert wait_until(lambda: not any(c.rejecting() for c in circuits), reset_after + SEEN), \
        [c.retry_after() for c in circuits]


def down() -> str:
    raise VendorDown("503 from the vendor")


# -- counting together --------------------------------------------------------------------------


def test_failures_in_different_circuits_add_up_and_open_all(peers: Peers) -> None:
    """One failure in each of three circuits opens the shared circuit everywhere (3 needed)."""
    a, b = peers.circuit(failures=3), peers.circuit(failures=3)
    c = peers.circuit(failures=3, refresh=QUIET)
    fail(a)
    fail(b)
    assert [a.state, b.state, c.state] == ["closed"] * 3
    fail(c)
    assert c.state == "open"  # Redis answered its failure with the opening
    assert peers.shared()["state"] == "open"
    all_reach([a, b], "open")
    assert a.admit() == REJECT
    assert b.admit() == REJECT


def test_a_success_anywhere_resets_the_shared_count(peers: Peers) -> None:
    """A success in another circuit resets the failures counted together."""
    a, b = peers.circuit(failures=3), peers.circuit(failures=3)
    fail(a, 2)
    # b's reader saw the shared count (so b's next success is recorded in Redis).
    assert wait_until(lambda: b.dirty, SEEN)
    succeed(b)
    assert peers.shared()["failures"] == "0"
    fail(a, 2)  # 4 failures in all, but not 3 in a row
    assert peers.shared()["state"] == "closed"
    assert [a.state, b.state] == ["closed", "closed"]


# -- half-open ------------------------------------------------------------------------------------


def test_half_open_admits_exactly_k_trials_across_circuits(peers: Peers) -> None:
    """With half_open_calls=2, two circuits get a trial and the third is rejected."""
    (a, b), c = half_open(peers, 2, reset_after=0.3, half_open_calls=2)
    gens = [a.admit(), b.admit(), c.admit()]
    assert [g != REJECT for g in gens] == [True, True, False]
    assert peers.shared()["trials"] == "2"
    assert wait_until(lambda: not c.rejecting(), SEEN)  # it may ask again later...
    assert c.admit() == REJECT  # ...and is still rejected while the trials run


def test_trial_successes_close_every_circuit(peers: Peers) -> None:
    """Once the K trials succeed, the circuit is closed for every process."""
    (a, b), c = half_open(peers, 2, reset_after=0.3, half_open_calls=2)
    ga, gb = a.admit(), b.admit()
    assert REJECT not in (ga, gb)
    a.success(ga, 0.001)
    assert peers.shared()["state"] == "half_open"  # one success of two
    b.success(gb, 0.001)
    assert peers.shared()["state"] == "closed"
    assert b.state == "closed"
    all_reach([c], "closed")  # by its reader, within a refresh
    succeed(a)  # a (which reads rarely) learns it when it next asks
    assert a.state == "closed"
    succeed(c)


def test_a_failed_trial_reopens_every_circuit(peers: Peers) -> None:
    """A trial's failure opens the circuit again, for reset_after, everywhere."""
    (a,), b = half_open(peers, 1, reset_after=0.6)
    gen = a.admit()
    assert gen != REJECT
    assert b.admit() == REJECT
    a.failure(gen, VendorDown("still down"), None)
    assert a.state == "open"
    assert peers.shared()["state"] == "open"
    # b's own wait after its refused trial is one refresh; the reopening makes it reset_after.
    assert wait_until(lambda: b.retry_after() > 0.3, SEEN), b.retry_after()
    assert b.admit() == REJECT


def test_a_released_trial_slot_goes_back_to_every_process(peers: Peers,
                                                          metrics: CollectorRegistry) -> None:
    """A trial ended by a caller error gives its slot back: another process gets the trial."""
    other = peers.circuit(failures=1, reset_after=0.3)
    fail(other)
    acme = vg.Vendor("acme", retry=None, registry=metrics, breaker=vg.Breaker(
        failures=1, reset_after=0.3, storage=peers.storage(refresh=QUIET)))
    assert acme.state == "open"
    inside: list[tuple[str, int]] = []

    @acme.guard("charge")
    def charge(amount: Any) -> None:
        inside.append((peers.shared()["trials"], other.admit()))
        raise TypeError("amount must be an int")  # the caller's mistake, not the vendor's

    expired([other, acme.circuit_for("charge")], 0.3)
    with pytest.raises(TypeError):
        charge("12.50")
    assert inside == [("1", REJECT)]  # the call held the only trial slot
    assert peers.shared()["trials"] == "0"
    assert wait_until(lambda: other.admit() != REJECT, SEEN)


def test_another_call_in_the_trial_process_does_not_void_the_trial(peers: Peers) -> None:
    """A second call in the process holding the only trial is rejected, and the trial's success
    still closes the circuit everywhere."""
    (a,), b = half_open(peers, 1, reset_after=0.3)
    trial = a.admit()
    assert trial != REJECT
    assert a.admit() == REJECT  # another thread of the same process, while the trial runs
    a.success(trial, 0.001)
    assert peers.shared()["state"] == "closed", peers.shared()
    all_reach([a, b], "closed")


def test_a_trial_slot_left_by_a_dead_process_is_given_back(peers: Peers) -> None:
    """A process that dies during its trial (it never reports) does not keep the shared
    circuit half-open forever: another process gets a trial after a further reset_after."""
    reset_after = 0.3
    (a,), b = half_open(peers, 1, reset_after=reset_after)
    assert a.admit() != REJECT  # a takes the trial...
    assert a.shared is not None
    a.shared.storage.close()  # ...and its process dies: nothing of it talks to Redis again
    assert b.admit() == REJECT
    got = wait_until(lambda: b.admit() != REJECT, 3 * reset_after + SEEN)
    assert got, f"still no trial for anyone; shared state {peers.shared()}"


# A read by the background reader that races a change this process makes to the circuit: the
# reader waits for the circuit's lock, which the change holds for its own Redis call, and then
# adopts what it read before the change. These tests make that interleaving happen for sure.


def read_now(circuit: Circuit) -> Snapshot:
    """What the circuit's reader (RedisStorage.sync) reads for it at this moment."""
    assert circuit.shared is not None
    snapshot = circuit.shared.storage.run("read", circuit.shared.key)
    assert snapshot is not None
    return snapshot


def test_a_read_older_than_an_opening_does_not_undo_it(peers: Peers) -> None:
    """The circuit this process just opened stays open when an older read is adopted."""
    circuit = peers.circuit(failures=1, refresh=QUIET)
    stale = read_now(circuit)
    fail(circuit)
    circuit.adopt(stale)
    assert circuit.state == "open"
    assert circuit.admit() == REJECT


def test_a_read_older_than_a_kill_switch_does_not_undo_it(peers: Peers) -> None:
    """force_open() here stays in force when an older read is adopted."""
    circuit = peers.circuit(refresh=QUIET)
    stale = read_now(circuit)
    circuit.force_open()
    circuit.adopt(stale)
    assert circuit.state == "forced_open"
    assert circuit.admit() == REJECT


def test_a_read_older_than_a_trial_does_not_void_it(peers: Peers) -> None:
    """A trial admitted here still closes the circuit when an older read is adopted while it
    runs (else its slot is never given back and the circuit stays half-open for good)."""
    (a,), _ = half_open(peers, 1, reset_after=0.3)
    stale = read_now(a)
    trial = a.admit()
    assert trial != REJECT
    a.adopt(stale)
    a.success(trial, 0.001)
    assert peers.shared()["state"] == "closed", peers.shared()


# -- control ------------------------------------------------------------------------------------


def test_force_open_on_one_forces_every_process(peers: Peers, metrics: CollectorRegistry) -> None:
    """vendor.force_open() here rejects calls in every other process too."""
    acme = vg.Vendor("acme", retry=None, registry=metrics, breaker=vg.Breaker(
        failures=3, storage=peers.storage(refresh=QUIET)))
    status = acme.guard("status.get")(lambda: "ok")
    others = [peers.circuit(), peers.circuit()]
    assert status() == "ok"
    acme.force_open(reason="vendor incident #123")
    with pytest.raises(vg.CircuitOpenError):
        status()
    assert peers.shared()["override"] == "forced_open"
    all_reach(others, "forced_open")
    assert [c.admit() for c in others] == [REJECT, REJECT]


@pytest.mark.parametrize("action", ["force_close", "reset"])
def test_force_close_or_reset_on_one_releases_every_process(
        peers: Peers, metrics: CollectorRegistry, action: str) -> None:
    """force_close() or reset() here releases a kill switch thrown in another process."""
    thrower, bystander = peers.circuit(), peers.circuit()
    thrower.force_open()
    all_reach([bystander], "forced_open")
    acme = vg.Vendor("acme", retry=None, registry=metrics, breaker=vg.Breaker(
        failures=3, storage=peers.storage(refresh=QUIET)))  # a process starting now
    status = acme.guard("status.get")(lambda: "ok")
    assert acme.state == "forced_open"
    with pytest.raises(vg.CircuitOpenError):
        status()
    getattr(acme, action)(reason="incident over")
    assert status() == "ok"
    assert peers.shared()["override"] == ""
    all_reach([thrower, bystander], "closed")
    succeed(bystander)


def test_disable_is_shared(peers: Peers) -> None:
    """disable() in one process makes every process observe without rejecting, and no
    failure is counted; close() anywhere ends it."""
    a, b = peers.circuit(failures=2, refresh=QUIET), peers.circuit(failures=2)
    a.disable()
    all_reach([b], "disabled")
    fail(b, 5)
    fail(a, 5)
    assert [a.state, b.state] == ["disabled", "disabled"]
    assert peers.shared()["failures"] == "0"
    a.close()
    assert peers.shared()["override"] == ""
    all_reach([b], "closed")
    fail(a)
    assert a.state == "closed"
    assert peers.shared()["failures"] == "1"  # counted again


# -- Redis away -----------------------------------------------------------------------------------


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "vendorguard" and r.levelno == logging.WARNING
            and "Redis" in r.getMessage()]


def test_redis_killed_mid_run_calls_go_on_and_state_resyncs(
        redis_server: RedisServer, peers: Peers, metrics: CollectorRegistry,
        caplog: pytest.LogCaptureFixture) -> None:
    """Redis dies: calls go on on local state, each storage warns once, the circuit opens
    locally; Redis is back: the local opening is published and adopted by other processes."""
    caplog.set_level(logging.WARNING, logger="vendorguard")
    storage = peers.storage()
    acme = vg.Vendor("acme", retry=None, registry=metrics, breaker=vg.Breaker(
        failures=3, reset_after=30.0, storage=storage))
    status = acme.guard("status.get")(lambda: "ok")
    send = acme.guard("mail.send", fallback="queued")(down)
    running = peers.circuit(failures=3)  # another process, linked all along
    assert status() == "ok"
    assert storage.online

    redis_server.stop()
    assert status() == "ok"
    assert send() == "queued"  # its failure could not reach Redis
    assert not storage.online
    # Every reader keeps trying, and failing.
    assert wait_until(lambda: all(s.errors >= 3 for s in peers.storages)), \
        [s.errors for s in peers.storages]
    assert send() == "queued"
    assert send() == "queued"  # the third failure, counted locally
    assert acme.state == "open"
    with pytest.raises(vg.CircuitOpenError):
        status()
    assert send() == "queued"
    failed = redis_warnings(caplog)
    assert len(failed) == len(peers.storages), failed  # once per storage, not per error
    assert all("failed with ConnectionError" in m for m in failed), failed

    redis_server.start()
    assert wait_until(lambda: storage.online, SEEN)
    assert wait_until(lambda: peers.shared()["state"] == "open", SEEN), peers.shared()
    assert acme.state == "open"
    all_reach([running], "open")
    latecomer = peers.circuit(failures=3)  # a process started now
    assert latecomer.state == "open"
    assert latecomer.admit() == REJECT
    back = redis_warnings(caplog)[len(failed):]
    assert back, "no warning that Redis answers again"
    assert all("answers again" in m for m in back), back


def test_redis_errors_are_counted_in_the_vendors_metrics(
        redis_server: RedisServer, peers: Peers, metrics: CollectorRegistry) -> None:
    """Failed Redis calls show in vendorguard_shared_state_errors_total{vendor=...}."""
    storage = peers.storage()
    acme = vg.Vendor("acme", retry=None, registry=metrics, breaker=vg.Breaker(
        failures=3, storage=storage))
    send = acme.guard("mail.send", fallback="queued")(down)
    redis_server.stop()
    assert send() == "queued"
    assert storage.errors > 0
    assert sample(metrics, "vendorguard_shared_state_errors_total", vendor="acme") > 0


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a hung Redis."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                self._held.append(self._listener.accept()[0])

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        for sock in [*self._held, self._listener]:
            sock.close()


class StallingProxy:
    """A TCP proxy on 127.0.0.1 to a Redis server. After :meth:`stall` it holds every byte
    (connections stay open, nothing is answered): Redis blocked, or the network gone quiet."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._stalled = threading.Event()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def stall(self) -> None:
        self._stalled.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client = self._listener.accept()[0]
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target), timeout=2)
            thread = threading.Thread(target=self._pipe, args=(client, upstream), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        peer = {client: upstream, upstream: client}
        with client, upstream, contextlib.suppress(OSError):
            while not self._closed.is_set():
                if self._stalled.is_set():
                    self._closed.wait(0.01)
                    continue
                readable, _, _ = select.select([client, upstream], [], [], 0.02)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peer[sock].sendall(data)

    def close(self) -> None:
        self._closed.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()


def redis_target(kind: str, port: int) -> str | redis.Redis:
    """What RedisStorage is given: a URL, or a client built the usual way."""
    if kind == "url":
        return f"redis://127.0.0.1:{port}/0"
    return redis.Redis(host="127.0.0.1", port=port)


@pytest.mark.parametrize("kind", ["url", "client"])
def test_hung_redis_bounds_the_guarded_call(namespace: str, metrics: CollectorRegistry,
                                            kind: str) -> None:
    """A Redis that accepts but never answers: building the vendor and a failing guarded
    call each take at most CALL_BOUND, and the caller sees only the vendor's own error."""
    server = SilentServer()
    storage = vg.RedisStorage(redis_target(kind, server.port), namespace=namespace,
                              refresh=5.0, timeout=0.05)
    try:
        start = time.monotonic()
        acme = vg.Vendor("acme", retry=None, registry=metrics, breaker=vg.Breaker(
            failures=3, storage=storage))
        send = acme.guard("mail.send")(down)
        acme.circuit_for("mail.send")
        built = time.monotonic() - start
        start = time.monotonic()
        with pytest.raises(VendorDown) as caught:
            send()
        took = time.monotonic() - start
    finally:
        storage.close()
        server.close()
    assert type(caught.value) is VendorDown
    assert built < CALL_BOUND, f"building the vendor took {built:.2f} s"
    assert took < CALL_BOUND, f"the call took {took:.2f} s"
    assert not storage.online
    assert storage.errors >= 1


@pytest.mark.parametrize("kind", ["url", "client"])
def test_redis_hanging_mid_run_bounds_the_guarded_call(
        redis_server: RedisServer, namespace: str, metrics: CollectorRegistry,
        kind: str) -> None:
    """Redis stops answering while circuits are linked: a failing guarded call, whose failure
    goes to Redis, still ends within CALL_BOUND with the vendor's own error."""
    proxy = StallingProxy(redis_server.port)
    # No background read for 5 s: the guarded call is the one that meets the hang.
    storage = vg.RedisStorage(redis_target(kind, proxy.port), namespace=namespace,
                              refresh=5.0, timeout=0.05)
    try:
        acme = vg.Vendor("acme", retry=None, registry=metrics, breaker=vg.Breaker(
            failures=3, storage=storage))
        send = acme.guard("mail.send")(down)
        with pytest.raises(VendorDown):
            send()
        assert storage.online
        assert storage.errors == 0
        proxy.stall()
        start = time.monotonic()
        with pytest.raises(VendorDown) as caught:
            send()
        took = time.monotonic() - start
    finally:
        storage.close()
        proxy.close()
    assert type(caught.value) is VendorDown
    assert took < CALL_BOUND, f"the call took {took:.2f} s"
    assert not storage.online
    assert storage.errors >= 1


# -- the storage itself -------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "error", "field"), [
    ({"namespace": ""}, ValueError, "namespace"),
    ({"namespace": "shop:eu"}, ValueError, "namespace"),
    ({"namespace": 7}, ValueError, "namespace"),
    ({"refresh": 0.01}, ValueError, "refresh"),
    ({"refresh": 6}, ValueError, "refresh"),
    ({"refresh": float("nan")}, ValueError, "refresh"),
    ({"refresh": True}, TypeError, "refresh"),
    ({"refresh": "0.2"}, TypeError, "refresh"),
    ({"timeout": 0.001}, ValueError, "timeout"),
    ({"timeout": 2}, ValueError, "timeout"),
    ({"timeout": False}, TypeError, "timeout"),
], ids=["empty-namespace", "colon-namespace", "int-namespace", "refresh-too-short",
        "refresh-too-long", "refresh-nan", "refresh-bool", "refresh-str", "timeout-too-short",
        "timeout-too-long", "timeout-bool"])
def test_bad_settings_are_refused_naming_the_field(options: dict[str, Any],
                                                   error: type[Exception], field: str) -> None:
    """A bad namespace, refresh or timeout is refused with the field's name."""
    with pytest.raises(error, match=rf"RedisStorage\.{field}\b"):
        vg.RedisStorage("redis://127.0.0.1:1/0", **options)


@pytest.mark.parametrize("client", [object(), 6379, b"redis://127.0.0.1:6379/0", None],
                         ids=["object", "int", "bytes", "none"])
def test_a_client_of_the_wrong_type_is_refused(client: object) -> None:
    """Only a redis.Redis client or a redis:// URL is taken."""
    with pytest.raises(TypeError, match=r"RedisStorage needs a redis\.Redis client"):
        vg.RedisStorage(client)


def reader_threads(namespace: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"vendorguard-redis-{namespace}"]


def test_close_stops_the_background_reader(peers: Peers, namespace: str) -> None:
    """close() ends (joins) the reader thread; the circuit goes on locally."""
    circuit = peers.circuit(failures=1)
    [reader] = reader_threads(namespace)
    assert reader.is_alive()
    peers.storages[0].close()
    assert not reader.is_alive()
    assert reader_threads(namespace) == []
    fail(circuit)
    assert circuit.state == "open"


# -- acceptance: real processes ---------------------------------------------------------------


def test_processes_share_one_circuit_during_an_outage(redis_server: RedisServer,
                                                      namespace: str) -> None:
    """Four processes calling a vendor that answers 503 make about ``failures`` calls to it in
    all, not four times that, and every one of them rejects within a refresh of the opening."""
    processes, pace, refresh, failures = 4, 0.05, 0.1, 10
    with FakeVendor() as fake:
        fake.script(Answer(503))
        plan = shared_child.Plan(
            redis_url=redis_server.url, namespace=namespace, vendor_url=fake.url,
            failures=failures, reset_after=30.0, refresh=refresh, redis_timeout=0.5, pace=pace,
            rejections=3, duration=10.0)
        reports = run_workers(processes, plan)
        vendor_calls = fake.seen()
    broken = [r["other"] for r in reports if r["other"]]
    assert not broken, "\n".join(broken)
    assert [r["storage_errors"] for r in reports] == [0] * processes  # else Redis was slow
    assert len(vendor_calls) == sum(r["vendor_errors"] for r in reports), reports
    # After the opening, each process may start one call every `pace` until its reader sees
    # it (within a refresh), plus the one already on its way. Without sharing, each process
    # would make `failures` calls of its own.
    bound = failures + processes * math.ceil(round(refresh / pace, 6)) + processes
    assert bound < processes * failures
    assert failures <= len(vendor_calls) <= bound, reports
    assert all(r["rejections"] == plan.rejections for r in reports), reports
    opened = vendor_calls[failures - 1].at  # the opening came after the failures-th call
    late = [r["first_rejection"] - opened for r in reports]
    assert max(late) < refresh + pace + 0.5, late


def run_workers(count: int, plan: shared_child.Plan) -> list[dict[str, Any]]:
    """Run ``count`` worker processes on ``plan`` together; their reports."""
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    workers = [ctx.Process(target=shared_child.work, args=(i, plan, ready, go, results),
                           name=f"shared-worker-{i}", daemon=True) for i in range(count)]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=60)
        go.set()
        return [results.get(timeout=plan.duration + 20) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
                worker.join(5)
