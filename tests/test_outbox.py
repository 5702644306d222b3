"""The durable outbox: failed write calls are kept on disk and delivered later, through the
same vendor guard, at least once, without leaking their payloads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import vendorguard as vg
from tests.conftest import sample
from tests.outbox_child import OPERATION as CHILD_OPERATION
from tests.outbox_child import VENDOR as CHILD_VENDOR
from tests.outbox_child import payload as child_payload

VENDOR = "mailer"
OP = "mail.send"
EMAIL = "alice@example.com"
TOKEN = "tok_live_9f8e7d6c5b4a3f2e1d0c"
CHILD = Path(__file__).with_name("outbox_child.py")
REPO = Path(__file__).resolve().parent.parent


# -- helpers ------------------------------------------------------------------------------------


class Mailbox:
    """A fake email vendor: raises ``error`` while ``down``, records what it delivered."""

    def __init__(self, down: bool = True, error: type[Exception] = ConnectionRefusedError
                 ) -> None:
        self.down = down
        self.error = error
        self.calls = 0
        self.delivered: list[tuple[Any, ...]] = []
        self.raised: list[Exception] = []
        self._lock = threading.Lock()

    def send(self, to: Any, subject: str = "hi", **extra: Any) -> str:
        with self._lock:
            self.calls += 1
        if self.down:
            exc = self.error("vendor unavailable")
            self.raised.append(exc)
            raise exc
        with self._lock:
            self.delivered.append((to, subject, *extra.values()))
        return "sent"


class Recorder:
    """A deliverer for ``Outbox.register`` that counts deliveries per payload number."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.payloads: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, payload: Any) -> None:
        with self._lock:
            self.counts[payload["n"]] += 1
            self.payloads.append(payload)


def calls(reg: CollectorRegistry, outcome: str) -> float:
    return sample(reg, "vendorguard_calls_total", vendor=VENDOR, operation=OP, outcome=outcome)


def all_calls(reg: CollectorRegistry) -> float:
    return sum(calls(reg, o) for o in ("success", "caller_error", "error", "timeout",
                                       "rejected"))


def pending_gauge(reg: CollectorRegistry, vendor: str = VENDOR) -> float:
    return sample(reg, "vendorguard_outbox_pending", vendor=vendor)


def drain_until(outbox: vg.Outbox, done: Callable[[], bool], seconds: float = 5.0) -> None:
    """Drain repeatedly (messages with a tiny backoff fall due again) until ``done()``."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the outbox did not get there in time"
        outbox.drain()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def make_outbox(db_path: Path, metrics: CollectorRegistry) -> Iterator[Callable[..., vg.Outbox]]:
    """Build outboxes (on ``db_path`` and the test's metrics unless told), closed at teardown."""
    made: list[vg.Outbox] = []

    def make(path: Path | None = None, **kwargs: Any) -> vg.Outbox:
        kwargs.setdefault("registry", metrics)
        outbox = vg.Outbox(path or db_path, **kwargs)
        made.append(outbox)
        return outbox

    yield make
    for outbox in made:
        outbox.close()


@pytest.fixture
def outbox(make_outbox: Callable[..., vg.Outbox]) -> vg.Outbox:
    return make_outbox()


@pytest.fixture
def fast_outbox(make_outbox: Callable[..., vg.Outbox]) -> vg.Outbox:
    """An outbox whose failed messages fall due again within a millisecond, 3 attempts."""
    return make_outbox(max_attempts=3, backoff=0.001, max_backoff=0.001)


@pytest.fixture
def vendor(metrics: CollectorRegistry) -> vg.Vendor:
    return vg.Vendor(VENDOR, retry=None, breaker=None, registry=metrics)


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


def guarded_send(vendor: vg.Vendor, outbox: vg.Outbox, mailbox: Mailbox) -> Callable[..., Any]:
    @vendor.guard(OP, fallback=outbox)
    def send(to: Any, subject: str = "hi", **extra: Any) -> str:
        return mailbox.send(to, subject, **extra)

    return send


# -- fallback=outbox ----------------------------------------------------------------------------


def test_failed_call_returns_a_receipt(vendor: vg.Vendor, outbox: vg.Outbox,
                                       mailbox: Mailbox) -> None:
    """A call that fails at the vendor returns a Receipt for the kept message."""
    receipt = guarded_send(vendor, outbox, mailbox)("bob@example.com")
    assert isinstance(receipt, vg.Receipt)
    assert (receipt.vendor, receipt.operation, receipt.key) == (VENDOR, OP, None)
    assert isinstance(receipt.id, int)


def test_failed_call_is_pending_with_its_arguments(vendor: vg.Vendor, outbox: vg.Outbox,
                                                   mailbox: Mailbox) -> None:
    """The kept message holds the call's args and kwargs, pending, with no attempt yet."""
    receipt = guarded_send(vendor, outbox, mailbox)("bob@example.com", subject="welcome")
    [message] = outbox.pending()
    assert message.id == receipt.id
    assert (message.vendor, message.operation, message.state, message.attempts) == (
        VENDOR, OP, "pending", 0)
    assert message.payload == {"args": ["bob@example.com"], "kwargs": {"subject": "welcome"}}


def test_failed_call_counts_in_pending_gauge(vendor: vg.Vendor, outbox: vg.Outbox,
                                             mailbox: Mailbox, metrics: CollectorRegistry
                                             ) -> None:
    """vendorguard_outbox_pending counts the kept message under the vendor's label."""
    guarded_send(vendor, outbox, mailbox)("bob@example.com")
    assert pending_gauge(metrics) == 1


def test_successful_call_enqueues_nothing(vendor: vg.Vendor, outbox: vg.Outbox,
                                          metrics: CollectorRegistry) -> None:
    """A call that succeeds returns the vendor's answer and keeps nothing."""
    assert guarded_send(vendor, outbox, Mailbox(down=False))("bob@example.com") == "sent"
    assert outbox.pending() == []
    assert pending_gauge(metrics) == 0


def test_caller_error_is_raised_not_enqueued(vendor: vg.Vendor, outbox: vg.Outbox) -> None:
    """A caller error (TypeError) reaches the caller and is not kept for redelivery."""
    with pytest.raises(TypeError, match="vendor unavailable"):
        guarded_send(vendor, outbox, Mailbox(error=TypeError))("bob@example.com")
    assert outbox.pending() == []


def test_call_rejected_by_open_circuit_is_enqueued(vendor: vg.Vendor, outbox: vg.Outbox
                                                   ) -> None:
    """A call the kill switch rejects is kept too: it never reached the vendor."""
    mailbox = Mailbox(down=False)
    vendor.force_open(reason="test")
    receipt = guarded_send(vendor, outbox, mailbox)("bob@example.com")
    assert isinstance(receipt, vg.Receipt)
    assert mailbox.calls == 0
    assert [m.id for m in outbox.pending()] == [receipt.id]


def test_async_guarded_function_is_enqueued_and_delivered(vendor: vg.Vendor, outbox: vg.Outbox,
                                                          mailbox: Mailbox) -> None:
    """An async guarded function gets a receipt, and drain() on a plain thread delivers it."""

    @vendor.guard(OP, fallback=outbox)
    async def send(to: str, subject: str = "hi") -> str:
        await asyncio.sleep(0)
        return mailbox.send(to, subject)

    receipt = asyncio.run(send("bob@example.com", subject="async"))
    assert isinstance(receipt, vg.Receipt)
    mailbox.down = False
    assert outbox.drain() == 1
    assert mailbox.delivered == [("bob@example.com", "async")]
    assert outbox.pending() == []


def test_proxy_method_is_enqueued_and_delivered(vendor: vg.Vendor, outbox: vg.Outbox,
                                                mailbox: Mailbox) -> None:
    """A client proxy method with fallback=outbox is kept and redelivered to the client."""
    client = vendor.wrap(mailbox, operations={"send": OP}, fallback=outbox)
    receipt = client.send("bob@example.com", subject="proxied")
    assert isinstance(receipt, vg.Receipt)
    assert outbox.pending()[0].payload == {"args": ["bob@example.com"],
                                           "kwargs": {"subject": "proxied"}}
    mailbox.down = False
    assert outbox.drain() == 1
    assert mailbox.delivered == [("bob@example.com", "proxied")]


# -- delivery -----------------------------------------------------------------------------------


def test_drain_delivers_through_the_vendor_guard(vendor: vg.Vendor, outbox: vg.Outbox,
                                                 mailbox: Mailbox, metrics: CollectorRegistry
                                                 ) -> None:
    """drain() redelivers the kept call through the vendor's guard and its metrics."""
    guarded_send(vendor, outbox, mailbox)("bob@example.com", subject="welcome")
    mailbox.down = False
    assert outbox.drain() == 1
    assert mailbox.delivered == [("bob@example.com", "welcome")]
    assert (calls(metrics, "error"), calls(metrics, "success")) == (1, 1)
    assert outbox.pending() == []


def test_delivery_counts_in_metrics(vendor: vg.Vendor, outbox: vg.Outbox, mailbox: Mailbox,
                                    metrics: CollectorRegistry) -> None:
    """A delivery adds one to delivered_total and takes one off the pending gauge."""
    guarded_send(vendor, outbox, mailbox)("bob@example.com")
    mailbox.down = False
    outbox.drain()
    assert sample(metrics, "vendorguard_outbox_delivered_total", vendor=VENDOR) == 1
    assert pending_gauge(metrics) == 0


def test_failed_redelivery_does_not_use_the_fallback(vendor: vg.Vendor, outbox: vg.Outbox,
                                                     mailbox: Mailbox,
                                                     metrics: CollectorRegistry) -> None:
    """A failing redelivery counts as a vendor call but keeps no second copy."""
    receipt = guarded_send(vendor, outbox, mailbox)("bob@example.com")
    assert outbox.drain() == 0
    assert calls(metrics, "error") == 2
    assert sample(metrics, "vendorguard_fallbacks_total", vendor=VENDOR, operation=OP,
                  reason="error") == 1
    [message] = outbox.pending()
    assert (message.id, message.attempts) == (receipt.id, 1)


def test_nothing_is_delivered_while_the_circuit_is_open(vendor: vg.Vendor, outbox: vg.Outbox,
                                                        mailbox: Mailbox,
                                                        metrics: CollectorRegistry) -> None:
    """With the vendor's circuit forced open, drain() delivers nothing and uses no attempt."""
    guarded_send(vendor, outbox, mailbox)("bob@example.com")
    mailbox.down = False
    vendor.force_open(reason="incident")
    before = all_calls(metrics)
    assert outbox.drain() == 0
    assert (all_calls(metrics), mailbox.calls) == (before, 1)
    assert outbox.pending()[0].attempts == 0


def test_a_half_open_circuit_turning_deliveries_away_ends_the_round(
        outbox: vg.Outbox, metrics: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a half-open circuit's trial is taken (by the application's own call), the first
    delivery it turns away leaves the vendor operation for the next round: the backlog is not
    claimed message by message only to be rejected."""
    now = [1000.0]
    monkeypatch.setattr(vg.breaker, "clock", lambda: now[0])
    v = vg.Vendor(VENDOR, retry=None, registry=metrics,
                  breaker=vg.Breaker(failures=1, reset_after=30.0))
    mailbox = Mailbox(down=True)
    send = guarded_send(v, outbox, mailbox)
    for n in range(5):
        send(f"user{n}@example.com")  # the first failure opens the circuit; all are kept
    mailbox.down = False
    now[0] += 31.0
    circuit = v.circuit_for(OP)
    trial = circuit.admit()  # the application's call in flight holds the one trial
    assert circuit.state == "half_open"
    before = calls(metrics, "rejected")
    assert outbox.drain() == 0
    assert calls(metrics, "rejected") - before == 1
    assert mailbox.calls == 1  # only the call that opened the circuit reached the vendor
    circuit.success(trial, 0.01)
    assert outbox.drain() == 4  # the one turned away waits for its backoff, unspent
    assert [m.attempts for m in outbox.pending()] == [0]


def test_delivery_resumes_when_the_circuit_closes(vendor: vg.Vendor, outbox: vg.Outbox,
                                                  mailbox: Mailbox) -> None:
    """Messages held back by an open circuit are delivered after force_close()."""
    guarded_send(vendor, outbox, mailbox)("bob@example.com")
    mailbox.down = False
    vendor.force_open(reason="incident")
    outbox.drain()
    vendor.force_close()
    assert outbox.drain() == 1
    assert mailbox.delivered == [("bob@example.com", "hi")]


def test_each_message_is_delivered_once_across_drains(outbox: vg.Outbox) -> None:
    """Two drains deliver every message exactly once."""
    recorder = Recorder()
    outbox.register(VENDOR, OP, recorder)
    for n in range(5):
        outbox.enqueue(VENDOR, OP, {"n": n})
    assert (outbox.drain(), outbox.drain()) == (5, 0)
    assert recorder.counts == Counter(range(5))


def test_two_outboxes_on_one_file_deliver_each_message_once(
        make_outbox: Callable[..., vg.Outbox]) -> None:
    """Two outboxes on one file draining at once (two threads) deliver each message once."""
    first, second = make_outbox(), make_outbox()
    recorder = Recorder()
    first.register(VENDOR, OP, recorder)
    second.register(VENDOR, OP, recorder)
    for n in range(60):
        first.enqueue(VENDOR, OP, {"n": n})
    barrier = threading.Barrier(2)
    delivered: list[int] = []

    def drain(outbox: vg.Outbox) -> None:
        barrier.wait(timeout=10)
        delivered.append(outbox.drain())

    threads = [threading.Thread(target=drain, args=(o,)) for o in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert recorder.counts == Counter(range(60))
    assert sum(delivered) == 60


def test_message_being_delivered_is_not_delivered_by_another_outbox(
        make_outbox: Callable[..., vg.Outbox]) -> None:
    """While one outbox holds a message's lease, another outbox on the file skips it."""
    first, second = make_outbox(), make_outbox()
    inside, release = threading.Event(), threading.Event()
    recorder = Recorder()

    def slow(payload: Any) -> None:
        inside.set()
        release.wait(timeout=10)
        recorder(payload)

    first.register(VENDOR, OP, slow)
    second.register(VENDOR, OP, recorder)
    first.enqueue(VENDOR, OP, {"n": 0})
    thread = threading.Thread(target=first.drain)
    thread.start()
    try:
        assert inside.wait(timeout=10)
        assert second.drain() == 0
    finally:
        release.set()
        thread.join(timeout=10)
    assert recorder.counts == Counter({0: 1})


def test_expired_lease_is_delivered_again(make_outbox: Callable[..., vg.Outbox]) -> None:
    """At least once: a message whose worker holds it past the lease is delivered by another."""
    first, second = make_outbox(lease=0.05), make_outbox(lease=0.05)
    inside, release = threading.Event(), threading.Event()
    recorder = Recorder()
    first.register(VENDOR, OP, lambda payload: (inside.set(), release.wait(timeout=10)))
    second.register(VENDOR, OP, recorder)
    first.enqueue(VENDOR, OP, {"n": 0})
    thread = threading.Thread(target=first.drain)
    thread.start()
    try:
        assert inside.wait(timeout=10)
        drain_until(second, lambda: recorder.counts[0] == 1)
    finally:
        release.set()
        thread.join(timeout=10)


def test_failed_delivery_waits_for_its_backoff(vendor: vg.Vendor, outbox: vg.Outbox,
                                               mailbox: Mailbox) -> None:
    """A failed delivery is due again only later: a drain right after delivers nothing."""
    guarded_send(vendor, outbox, mailbox)("bob@example.com")
    outbox.drain()
    assert outbox.pending()[0].next_attempt > time.time()
    mailbox.down = False
    assert outbox.drain() == 0
    assert mailbox.calls == 2


@pytest.mark.parametrize(("backoff", "max_backoff", "low", "high"), [
    (600.0, 3600.0, 300.0, 600.0),
    (600.0, 2.0, 1.0, 2.0),
], ids=["backoff", "capped-by-max_backoff"])
def test_backoff_settings_are_honoured(make_outbox: Callable[..., vg.Outbox], vendor: vg.Vendor,
                                       mailbox: Mailbox, backoff: float, max_backoff: float,
                                       low: float, high: float) -> None:
    """The first retry is scheduled within [backoff/2, backoff], capped by max_backoff."""
    outbox = make_outbox(backoff=backoff, max_backoff=max_backoff)
    guarded_send(vendor, outbox, mailbox)("bob@example.com")
    before = time.time()
    outbox.drain()
    after = time.time()
    next_attempt = outbox.pending()[0].next_attempt
    assert before + low <= next_attempt <= after + high


def test_message_is_dead_after_max_attempts(vendor: vg.Vendor, fast_outbox: vg.Outbox,
                                            mailbox: Mailbox) -> None:
    """After max_attempts failed deliveries the message is a dead letter."""
    receipt = guarded_send(vendor, fast_outbox, mailbox)("bob@example.com")
    drain_until(fast_outbox, lambda: bool(fast_outbox.dead()))
    [message] = fast_outbox.dead()
    assert (message.id, message.state, message.attempts) == (receipt.id, "dead", 3)
    assert fast_outbox.pending() == []
    assert mailbox.calls == 1 + 3


def test_dead_letter_keeps_only_the_exception_type_name(vendor: vg.Vendor,
                                                        fast_outbox: vg.Outbox,
                                                        mailbox: Mailbox) -> None:
    """A dead letter's last_error is the exception's type name, not its message."""
    guarded_send(vendor, fast_outbox, mailbox)("bob@example.com")
    drain_until(fast_outbox, lambda: bool(fast_outbox.dead()))
    assert fast_outbox.dead()[0].last_error == "ConnectionRefusedError"


def test_dead_letter_counts_in_metrics(vendor: vg.Vendor, fast_outbox: vg.Outbox,
                                       mailbox: Mailbox, metrics: CollectorRegistry) -> None:
    """A dead letter adds one to dead_total and takes one off the pending gauge."""
    guarded_send(vendor, fast_outbox, mailbox)("bob@example.com")
    assert pending_gauge(metrics) == 1
    drain_until(fast_outbox, lambda: bool(fast_outbox.dead()))
    assert sample(metrics, "vendorguard_outbox_dead_total", vendor=VENDOR) == 1
    assert pending_gauge(metrics) == 0


def test_caller_error_on_redelivery_is_dead_at_once(vendor: vg.Vendor, outbox: vg.Outbox,
                                                    mailbox: Mailbox) -> None:
    """A redelivery the vendor function rejects as a caller error is dead after one attempt."""
    guarded_send(vendor, outbox, mailbox)("bob@example.com")
    mailbox.error = TypeError
    assert outbox.drain() == 0
    [message] = outbox.dead()
    assert (message.attempts, message.last_error) == (1, "TypeError")
    assert outbox.pending() == []


def test_requeue_makes_a_dead_letter_pending_again(vendor: vg.Vendor, fast_outbox: vg.Outbox,
                                                   mailbox: Mailbox) -> None:
    """requeue(id) gives a dead letter a fresh round: pending, attempts 0."""
    receipt = guarded_send(vendor, fast_outbox, mailbox)("bob@example.com")
    drain_until(fast_outbox, lambda: bool(fast_outbox.dead()))
    fast_outbox.requeue(receipt.id)
    [message] = fast_outbox.pending()
    assert (message.id, message.state, message.attempts) == (receipt.id, "pending", 0)
    assert fast_outbox.dead() == []


def test_requeued_message_is_delivered(vendor: vg.Vendor, fast_outbox: vg.Outbox,
                                       mailbox: Mailbox, metrics: CollectorRegistry) -> None:
    """A requeued dead letter is counted as pending again and delivered by the next drain."""
    receipt = guarded_send(vendor, fast_outbox, mailbox)("bob@example.com")
    drain_until(fast_outbox, lambda: bool(fast_outbox.dead()))
    fast_outbox.requeue(receipt.id)
    assert pending_gauge(metrics) == 1
    mailbox.down = False
    assert fast_outbox.drain() == 1
    assert mailbox.delivered == [("bob@example.com", "hi")]


@pytest.mark.parametrize("message_id", [999, -1], ids=["unknown", "negative"])
def test_requeue_of_an_unknown_id_raises_key_error(outbox: vg.Outbox, message_id: int) -> None:
    """requeue() of an id that is not a dead letter raises KeyError."""
    outbox.enqueue(VENDOR, OP, {"n": 0})
    with pytest.raises(KeyError):
        outbox.requeue(message_id)


def test_requeue_of_a_pending_message_raises_key_error(outbox: vg.Outbox) -> None:
    """requeue() only applies to dead letters."""
    receipt = outbox.enqueue(VENDOR, OP, {"n": 0})
    with pytest.raises(KeyError):
        outbox.requeue(receipt.id)


def test_key_returns_the_first_receipt(outbox: vg.Outbox) -> None:
    """A second enqueue with the same key returns the first receipt and keeps one message."""
    first = outbox.enqueue(VENDOR, OP, {"n": 1}, key="order-1")
    second = outbox.enqueue(VENDOR, OP, {"n": 2}, key="order-1")
    assert second == first
    assert [m.payload for m in outbox.pending()] == [{"n": 1}]


def test_key_deduplicates_in_the_pending_gauge(outbox: vg.Outbox,
                                               metrics: CollectorRegistry) -> None:
    """A deduplicated enqueue does not count as another pending message."""
    outbox.enqueue(VENDOR, OP, {"n": 1}, key="order-1")
    outbox.enqueue(VENDOR, OP, {"n": 1}, key="order-1")
    assert pending_gauge(metrics) == 1


def test_key_deduplicates_after_delivery(outbox: vg.Outbox) -> None:
    """A key already delivered returns the first receipt and is not delivered again."""
    recorder = Recorder()
    outbox.register(VENDOR, OP, recorder)
    first = outbox.enqueue(VENDOR, OP, {"n": 1}, key="order-1")
    outbox.drain()
    assert outbox.enqueue(VENDOR, OP, {"n": 1}, key="order-1").id == first.id
    assert (outbox.pending(), outbox.drain()) == ([], 0)
    assert recorder.counts == Counter({1: 1})


def test_same_key_for_another_operation_is_another_message(outbox: vg.Outbox) -> None:
    """Keys deduplicate per (vendor, operation)."""
    first = outbox.enqueue(VENDOR, OP, {"n": 1}, key="order-1")
    other = outbox.enqueue(VENDOR, "mail.cancel", {"n": 1}, key="order-1")
    assert other.id != first.id
    assert len(outbox.pending()) == 2


def test_key_enqueued_at_once_by_many_writers_is_one_message(
        make_outbox: Callable[..., vg.Outbox]) -> None:
    """Writers on two outboxes racing to enqueue one key all get its receipt, never an error."""
    outboxes = [make_outbox(), make_outbox()]
    start = threading.Barrier(8)
    receipts: list[vg.Receipt] = []
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        start.wait(timeout=10)
        try:
            receipts.append(outboxes[i % 2].enqueue(VENDOR, OP, {"n": 1}, key="order-1"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
    assert len({r.id for r in receipts}) == 1
    assert len(receipts) == 8
    assert len(outboxes[0].pending()) == 1


def test_unknown_operation_is_left_pending(outbox: vg.Outbox) -> None:
    """drain() keeps messages no deliverer is registered for (another process may know)."""
    receipt = outbox.enqueue("ghost", "op", {"n": 1})
    assert outbox.drain() == 0
    [message] = outbox.pending()
    assert (message.id, message.attempts, message.state) == (receipt.id, 0, "pending")


def test_worker_delivers_without_drain(outbox: vg.Outbox) -> None:
    """start() delivers in the background, no drain() needed."""
    delivered = threading.Event()
    outbox.register(VENDOR, OP, lambda payload: delivered.set())
    outbox.start(interval=0.05)
    outbox.enqueue(VENDOR, OP, {"n": 1})
    assert delivered.wait(timeout=10)
    deadline = time.monotonic() + 5
    while outbox.pending():
        assert time.monotonic() < deadline, "delivered but still pending"


def outbox_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "vendorguard-outbox" and t.is_alive()}


def test_stop_ends_the_worker_thread(outbox: vg.Outbox) -> None:
    """stop() ends the background thread."""
    before = outbox_threads()
    outbox.start(interval=0.05)
    assert len(outbox_threads() - before) == 1
    outbox.stop()
    assert outbox_threads() - before == set()


def test_start_twice_runs_one_worker(outbox: vg.Outbox) -> None:
    """A second start() does not start a second thread."""
    before = outbox_threads()
    outbox.start(interval=0.05)
    outbox.start(interval=0.05)
    assert len(outbox_threads() - before) == 1


# -- durability and safety ----------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX modes, checked on Linux")
@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"], ids=["db", "wal", "shm"])
def test_files_are_owner_only(make_outbox: Callable[..., vg.Outbox], db_path: Path,
                              suffix: str) -> None:
    """The database and its WAL files are created 0600, even under a permissive umask."""
    with umask(0):
        outbox = make_outbox()
        outbox.enqueue(VENDOR, OP, {"to": EMAIL})
    mode = os.stat(f"{db_path}{suffix}").st_mode & 0o777
    assert mode == 0o600, oct(mode)


def test_messages_survive_close_and_reopen(make_outbox: Callable[..., vg.Outbox]) -> None:
    """A message enqueued before close() is pending, intact, after reopening the file."""
    outbox = make_outbox()
    receipt = outbox.enqueue(VENDOR, OP, {"to": EMAIL, "n": [1, 2.5, None, True]})
    outbox.close()
    [message] = make_outbox(registry=CollectorRegistry()).pending()
    assert (message.id, message.payload) == (receipt.id, {"to": EMAIL, "n": [1, 2.5, None, True]})


def test_reopened_outbox_reports_its_pending_messages(make_outbox: Callable[..., vg.Outbox]
                                                      ) -> None:
    """The pending gauge of a reopened outbox counts the messages already in the file."""
    outbox = make_outbox()
    for n in range(3):
        outbox.enqueue(VENDOR, OP, {"n": n})
    outbox.close()
    fresh = CollectorRegistry()
    make_outbox(registry=fresh)
    assert pending_gauge(fresh) == 3



def test_pending_gauge_never_goes_negative_across_processes(
        make_outbox: Callable[..., vg.Outbox]) -> None:
    """An outbox delivering messages another process enqueued reports 0 pending, not less."""
    enqueuer = make_outbox(registry=CollectorRegistry())
    deliverer_metrics = CollectorRegistry()
    deliverer = make_outbox(registry=deliverer_metrics)
    deliverer.register(VENDOR, OP, Recorder())
    for n in range(3):
        enqueuer.enqueue(VENDOR, OP, {"n": n})
    assert deliverer.drain() == 3
    assert pending_gauge(deliverer_metrics) == 0


def test_file_is_a_sqlite_database_in_wal_mode(outbox: vg.Outbox, db_path: Path) -> None:
    """The outbox file is SQLite with its journal in WAL mode (concurrent readers, durable)."""
    outbox.enqueue(VENDOR, OP, {"n": 0})
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

def run_lifecycle(vendor: vg.Vendor, outbox: vg.Outbox) -> None:
    """Enqueue a call with personal data, fail it to a dead letter, requeue and deliver it."""
    mailbox = Mailbox()
    send = guarded_send(vendor, outbox, mailbox)
    receipt = send(EMAIL, subject="reset", token=TOKEN)
    drain_until(outbox, lambda: bool(outbox.dead()))
    outbox.requeue(receipt.id)
    mailbox.down = False
    assert outbox.drain() == 1
    assert mailbox.delivered == [(EMAIL, "reset", TOKEN)]


def test_payload_never_reaches_logs(vendor: vg.Vendor, fast_outbox: vg.Outbox,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """Enqueue, failures, dead letter, requeue and delivery log nothing from the payload."""
    with caplog.at_level("DEBUG", logger="vendorguard"):
        run_lifecycle(vendor, fast_outbox)
    assert any("dead letter" in r.getMessage() for r in caplog.records)  # it did log
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert EMAIL not in logged
    assert TOKEN not in logged


def test_payload_never_reaches_metrics(vendor: vg.Vendor, fast_outbox: vg.Outbox,
                                       metrics: CollectorRegistry) -> None:
    """The exposition holds outbox metrics but nothing from the payload."""
    run_lifecycle(vendor, fast_outbox)
    text = generate_latest(metrics).decode()
    assert "vendorguard_outbox_delivered_total" in text
    assert EMAIL not in text
    assert TOKEN not in text


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [object(), float("nan"), {"when": time}],
                         ids=["object", "nan", "module"])
def test_unserialisable_payload_is_refused(outbox: vg.Outbox, bad: Any) -> None:
    """A payload JSON cannot hold raises TypeError naming JSON and keeps nothing."""
    outbox.enqueue(VENDOR, OP, {"n": 0})
    with pytest.raises(TypeError, match="JSON"):
        outbox.enqueue(VENDOR, OP, {"value": bad})
    assert len(outbox.pending()) == 1


def test_unserialisable_call_raises_fallback_error(vendor: vg.Vendor, outbox: vg.Outbox,
                                                   mailbox: Mailbox) -> None:
    """A failed call the outbox cannot keep raises FallbackError caused by the vendor failure."""
    with pytest.raises(vg.FallbackError) as caught:
        guarded_send(vendor, outbox, mailbox)(object())
    assert caught.value.__cause__ is mailbox.raised[0]
    assert outbox.pending() == []


def test_closed_outbox_refuses_enqueue(outbox: vg.Outbox) -> None:
    """enqueue() on a closed outbox raises OutboxError."""
    outbox.close()
    with pytest.raises(vg.OutboxError, match="closed"):
        outbox.enqueue(VENDOR, OP, {"n": 0})


def test_closed_outbox_as_fallback_raises_fallback_error(vendor: vg.Vendor, outbox: vg.Outbox,
                                                         mailbox: Mailbox) -> None:
    """A failed call whose outbox is closed raises FallbackError caused by the vendor failure."""
    send = guarded_send(vendor, outbox, mailbox)
    outbox.close()
    with pytest.raises(vg.FallbackError) as caught:
        send("bob@example.com")
    assert caught.value.__cause__ is mailbox.raised[0]
    assert isinstance(caught.value.__context__, vg.OutboxError)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable: by its mode, or for root (whom modes do not stop) with the
    immutable attribute."""
    if os.geteuid() != 0:
        old = path.stat().st_mode & 0o777
        path.chmod(0o500 if path.is_dir() else 0o400)
        try:
            yield
        finally:
            path.chmod(old)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)],
                                        capture_output=True).returncode != 0:
        pytest.skip("running as root, and chattr +i is unavailable here: no honest way to "
                    "make the file read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


@pytest.mark.parametrize("what", ["file", "directory"])
def test_read_only_outbox_raises_outbox_error(make_outbox: Callable[..., vg.Outbox],
                                              db_path: Path, what: str) -> None:
    """An outbox whose file (or directory, where WAL files go) is read-only refuses to keep
    messages with an OutboxError naming the file, at open or at enqueue, never silently."""
    outbox = make_outbox()
    outbox.enqueue(VENDOR, OP, {"n": 0})
    outbox.close()
    with read_only(db_path if what == "file" else db_path.parent), \
            pytest.raises(vg.OutboxError, match=re.escape(str(db_path))):
        make_outbox(registry=CollectorRegistry()).enqueue(VENDOR, OP, {"n": 1})


def test_corrupt_file_raises_outbox_error_naming_the_path(make_outbox: Callable[..., vg.Outbox],
                                                          db_path: Path) -> None:
    """A file that is not a SQLite database fails at open with OutboxError naming the path."""
    db_path.write_bytes(b"\x13\x37garbage" + os.urandom(4096))
    with pytest.raises(vg.OutboxError, match=re.escape(str(db_path))):
        make_outbox()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": 2.5}, "max_attempts"),
    ({"backoff": -1}, "backoff"),
    ({"backoff": 0}, "backoff"),
    ({"max_backoff": -1}, "max_backoff"),
    ({"lease": 0}, "lease"),
], ids=["max_attempts-0", "max_attempts-float", "backoff-negative", "backoff-0",
        "max_backoff-negative", "lease-0"])
def test_invalid_argument_raises_value_error(db_path: Path, metrics: CollectorRegistry,
                                             kwargs: dict[str, Any], field: str) -> None:
    """An invalid constructor argument raises ValueError naming it, before any file is made."""
    with pytest.raises(ValueError, match=field):
        vg.Outbox(db_path, registry=metrics, **kwargs)
    assert not db_path.exists()


# -- crash safety -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, int]]:
    """Run the child until it acknowledged 200 messages, SIGKILL it; returns the directory
    with the files as the crash left them and {receipt id: message number} it printed."""
    folder = tmp_path_factory.mktemp("crash")
    proc = subprocess.Popen([sys.executable, str(CHILD), str(folder / "outbox.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()],
                              daemon=True)
    reader.start()
    printed: dict[int, int] = {}
    deadline = time.monotonic() + 20
    try:
        while len(printed) < 200:
            left = deadline - time.monotonic()
            assert left > 0, f"the child acknowledged only {len(printed)} messages in time"
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            receipt_id, number = line.split()
            printed[int(receipt_id)] = int(number)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == -9, proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    return folder, printed


@pytest.fixture
def after_crash(crashed: tuple[Path, dict[int, int]], tmp_path: Path
                ) -> tuple[Path, dict[int, int]]:
    """A copy of the crashed files (database and WAL) for one test to reopen."""
    folder, printed = crashed
    for name in ("outbox.db", "outbox.db-wal"):
        if (folder / name).exists():
            shutil.copy2(folder / name, tmp_path / name)
    return tmp_path / "outbox.db", printed


def test_acknowledged_messages_survive_sigkill(after_crash: tuple[Path, dict[int, int]],
                                               make_outbox: Callable[..., vg.Outbox]) -> None:
    """Every message whose enqueue returned before SIGKILL is kept, payload intact."""
    path, printed = after_crash
    kept = {m.id: m for m in make_outbox(path).pending()}
    missing = sorted(set(printed) - set(kept))
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
    for receipt_id, number in printed.items():
        message = kept[receipt_id]
        assert (message.vendor, message.operation) == (CHILD_VENDOR, CHILD_OPERATION)
        assert message.payload == child_payload(number)


def test_delivery_completes_after_sigkill(after_crash: tuple[Path, dict[int, int]],
                                          make_outbox: Callable[..., vg.Outbox]) -> None:
    """After the crash, draining the reopened outbox delivers every message, none dead."""
    path, printed = after_crash
    outbox = make_outbox(path)
    delivered: list[Any] = []
    outbox.register(CHILD_VENDOR, CHILD_OPERATION, delivered.append)
    kept_messages = outbox.pending()
    assert len(kept_messages) >= len(printed)
    assert outbox.drain() == len(kept_messages)
    assert (outbox.pending(), outbox.dead()) == ([], [])
    assert sorted(d["kwargs"]["subject"] for d in delivered) == sorted(
        m.payload["kwargs"]["subject"] for m in kept_messages)


@pytest.mark.parametrize(("keep_ambiguous", "kept"), [(False, False), (True, True)],
                         ids=["declined", "kept-when-asked"])
def test_ambiguous_failure_is_kept_only_when_asked(
        make_outbox: Callable[..., vg.Outbox], metrics: CollectorRegistry,
        keep_ambiguous: bool, kept: bool) -> None:
    """A failure where the vendor may have acted is raised, unless duplicates are accepted."""
    outbox = make_outbox(keep_ambiguous=keep_ambiguous)
    vendor = vg.Vendor(VENDOR, retry=None, registry=metrics)

    @vendor.guard(OP, fallback=outbox)
    def send(to: str) -> None:
        raise TimeoutError("read timed out after the request was sent")

    if kept:
        assert isinstance(send("a"), vg.Receipt)
    else:
        with pytest.raises(TimeoutError):
            send("a")
    assert len(outbox.pending()) == (1 if kept else 0)
