"""vendorguard's metrics in prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR).

Two levels. A real gunicorn with several sync workers serves tests/multiproc/app.py and its
merged /metrics. And, in this process, several workers are played by giving each the value
class prometheus-client would give a process of that pid (it picks the class once, at import,
from the environment), so every gauge mode can be checked worker by worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

import vendorguard as vg
from tests.conftest import Gate, held, sample, wait_until
from vendorguard import registry as _registry
from vendorguard.telemetry import metrics as metrics_module
from vendorguard.telemetry.metrics import CIRCUIT_STATES, GAUGE_MODES, Families, families

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "running-at-scale.md"
LIMIT = 20.0
"""Longest any single wait of these tests lasts (seconds)."""
WORKERS = 3

Worker = Callable[[int], CollectorRegistry]


# --------------------------------------------------------------------------------------------
# several workers in this process
# --------------------------------------------------------------------------------------------
@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Multiprocess mode on, with an empty shared directory."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def worker(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Worker:
    """``worker(pid)``: the metrics and vendors made next belong to the process ``pid``."""

    def become(pid: int) -> CollectorRegistry:
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid))
        _registry.clear()  # vendor names are unique per process, not across processes
        return CollectorRegistry()

    return become


def merged(directory: Path) -> CollectorRegistry:
    """What a scrape of the shared directory shows."""
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(directory))  # type: ignore[no-untyped-call]
    return reg


def state(directory: Path, circuit_state: str) -> float:
    return sample(merged(directory), "vendorguard_circuit_state", vendor="acme", circuit="acme",
                  state=circuit_state)


def gauges(fam: Families) -> list[Gauge]:
    return [g for g in (getattr(fam, f.name) for f in dataclasses.fields(fam))
            if isinstance(g, Gauge)]


def test_every_gauge_has_a_mode() -> None:
    """Every vendorguard gauge has its multiprocess mode in GAUGE_MODES, and no other name does."""
    assert {g._name for g in gauges(families(CollectorRegistry()))} == set(GAUGE_MODES)


@pytest.mark.parametrize("name", sorted(GAUGE_MODES), ids=sorted(GAUGE_MODES))
def test_gauge_mode_is_used_and_documented(name: str) -> None:
    """The gauge is built with its mode, and docs/running-at-scale.md gives the same one."""
    gauge = next(g for g in gauges(families(CollectorRegistry())) if g._name == name)
    assert gauge._multiprocess_mode == GAUGE_MODES[name]
    rows = [line for line in DOC.read_text(encoding="utf-8").splitlines()
            if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1
    assert f"`{GAUGE_MODES[name]}`" in rows[0].split("|")[2]


def computed_at_scrape(fam: Families) -> list[str]:
    """The gauges with a child whose value is computed when scraped (set_function)."""
    return [g._name for g in gauges(fam)
            for child in (g._metrics.values() if g._labelnames else [g])
            if "_child_samples" in vars(child)]


def test_no_gauge_is_computed_at_scrape_time(worker: Worker) -> None:
    """In multiprocess mode every vendorguard gauge holds a written value."""
    acme = vg.Vendor("acme", registry=worker(1001))
    acme.call("op", lambda: 1)
    assert computed_at_scrape(acme.families) == []


def test_one_process_computes_in_flight_at_scrape(metrics: CollectorRegistry) -> None:
    """In one process the in-flight gauge is computed at scrape (so the check above can see)."""
    acme = vg.Vendor("acme", registry=metrics)
    assert computed_at_scrape(acme.families) == ["vendorguard_calls_in_flight"]


def failing() -> None:
    raise ConnectionRefusedError("down")


def test_circuit_state_is_one_when_any_live_worker_is_in_it(worker: Worker,
                                                            directory: Path) -> None:
    """One worker's circuit open, another's closed: both states read 1 (livemax)."""
    opened = vg.Vendor("acme", registry=worker(1001), retry=None, breaker=vg.Breaker(failures=1))
    with pytest.raises(ConnectionRefusedError):
        opened.call("op", failing)
    vg.Vendor("acme", registry=worker(1002), retry=None).call("op", lambda: 1)
    assert opened.state == "open"
    assert (state(directory, "open"), state(directory, "closed")) == (1.0, 1.0)
    assert state(directory, "half_open") == 0.0


def test_dead_workers_circuit_state_is_forgotten(worker: Worker, directory: Path) -> None:
    """Once the worker with the open circuit is marked dead, open reads 0 again."""
    opened = vg.Vendor("acme", registry=worker(1001), retry=None, breaker=vg.Breaker(failures=1))
    with pytest.raises(ConnectionRefusedError):
        opened.call("op", failing)
    vg.Vendor("acme", registry=worker(1002), retry=None)
    mark_process_dead(1001, str(directory))
    assert (state(directory, "open"), state(directory, "closed")) == (0.0, 1.0)


def test_calls_in_flight_add_up_across_workers(worker: Worker, directory: Path) -> None:
    """A call held in each of two workers: two in flight; none once both end (livesum)."""
    first, second = Gate(), Gate()
    a = vg.Vendor("acme", registry=worker(1001))
    b = vg.Vendor("acme", registry=worker(1002))
    with held(lambda: a.call("op", first), first), held(lambda: b.call("op", second), second):
        during = sample(merged(directory), "vendorguard_calls_in_flight", vendor="acme")
    assert during == 2.0
    assert sample(merged(directory), "vendorguard_calls_in_flight", vendor="acme") == 0.0


def test_metrics_endpoint_skips_a_workers_empty_file(worker: Worker, directory: Path) -> None:
    """A file a worker has only just created (or died while creating) is empty; /metrics
    merges the others instead of failing the whole scrape."""
    acme = vg.Vendor("acme", registry=worker(1001))
    acme.call("op", lambda: None)
    (directory / "counter_1002.db").touch()
    status, body = _scrape_app()
    assert status.startswith("200")
    assert 'vendorguard_calls_total{operation="op",outcome="success",vendor="acme"} 1.0' in body


def _scrape_app() -> tuple[str, str]:
    from vendorguard.telemetry.server import make_wsgi_app

    started: list[str] = []
    chunks = make_wsgi_app()({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"},
                             lambda status, headers: started.append(status))
    return started[0], b"".join(chunks).decode()


def test_abandoned_calls_add_up_across_workers(worker: Worker, directory: Path) -> None:
    """A timed-out call still running in each of two workers: two abandoned (livesum)."""
    gates = [Gate(), Gate()]
    quick = vg.Timeout(attempt=0.05)
    vendors = [vg.Vendor("acme", registry=worker(pid), retry=None, timeout=quick)
               for pid in (1001, 1002)]
    try:
        for v, gate in zip(vendors, gates, strict=True):
            with pytest.raises(vg.VendorTimeoutError):
                v.call("op", gate)
        assert sample(merged(directory), "vendorguard_abandoned_calls", vendor="acme") == 2.0
    finally:
        for gate in gates:
            gate.release.set()
    assert wait_until(lambda: sample(merged(directory), "vendorguard_abandoned_calls",
                                     vendor="acme") == 0.0, timeout=LIMIT)


@pytest.mark.skipif(GAUGE_MODES["vendorguard_outbox_pending"] != "livemostrecent",
                    reason="prometheus-client < 0.18 has no mostrecent modes")
def test_outbox_pending_is_the_count_written_last(worker: Worker, directory: Path) -> None:
    """Two workers on one outbox file: after one delivers, pending is 0, not the other's 2."""
    path = directory.parent / "outbox.db"
    writer = vg.Outbox(path, registry=worker(1001))
    for n in range(2):
        writer.enqueue("mailer", "mail.send", {"n": n})
    assert sample(merged(directory), "vendorguard_outbox_pending", vendor="mailer") == 2.0
    delivered: list[Any] = []
    deliverer = vg.Outbox(path, registry=worker(1002))
    deliverer.register("mailer", "mail.send", delivered.append)
    try:
        assert deliverer.drain() == 2
    finally:
        writer.close()
        deliverer.close()
    assert sample(merged(directory), "vendorguard_outbox_pending", vendor="mailer") == 0.0


def test_config_generation_is_reported_per_worker(worker: Worker, directory: Path) -> None:
    """Each live worker's generation is its own series (liveall), labelled with its pid."""
    vg.Vendor("acme", registry=worker(1001))
    vg.configure({"vendors": {"acme": {"timeout": {"attempt": 2.0}}}}, env=False)
    vg.Vendor("acme", registry=worker(1002))
    mark_process_dead(1001, str(directory))
    vg.Vendor("acme", registry=worker(1003))
    found = {s.labels["pid"]: s.value for m in merged(directory).collect()
             if m.name == "vendorguard_config_generation" for s in m.samples}
    assert found == {"1002": 1.0, "1003": 1.0}


def test_after_fork_writes_state_and_generation_again(directory: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked process starts empty files; after_fork() writes its inherited state there."""
    pid = [1001]
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid[0]))
    vg.configure({}, env=False)
    acme = vg.Vendor("acme", registry=CollectorRegistry(), retry=None,
                     breaker=vg.Breaker(failures=1))
    with pytest.raises(ConnectionRefusedError):
        acme.call("op", failing)
    pid[0] = 1002  # as after os.fork(): prometheus-client starts files for the new pid
    mark_process_dead(1001, str(directory))
    generation = {"pid": "1002"}
    assert state(directory, "open") == 0.0
    assert sample(merged(directory), "vendorguard_config_generation", **generation) == 0.0
    metrics_module.after_fork()
    assert (state(directory, "open"), state(directory, "closed")) == (1.0, 0.0)
    assert sample(merged(directory), "vendorguard_config_generation", **generation) == 1.0


# --------------------------------------------------------------------------------------------
# the LaunchDarkly flag data age, written instead of computed
# --------------------------------------------------------------------------------------------
@pytest.fixture
def ld() -> Any:
    pytest.importorskip("ldclient")
    from vendorguard.integrations import launchdarkly

    return launchdarkly


def flag_client(ld: Any, reg: CollectorRegistry) -> Any:
    """A drop-in on TestData, whose status the test drives through the SDK's own sink."""
    from ldclient import Config
    from ldclient.integrations.test_data import TestData

    return ld.LDClient(Config("sdk-test", update_processor_class=TestData.data_source(),
                              send_events=False, diagnostic_opt_out=True), registry=reg)


def report(client: Any, state_name: str) -> None:
    """Make the client's data source report ``state_name`` as its data sources do."""
    from ldclient.interfaces import DataSourceErrorInfo, DataSourceErrorKind, DataSourceState

    error = None if state_name == "VALID" else DataSourceErrorInfo(
        DataSourceErrorKind.NETWORK_ERROR, 0, 0.0, None)
    client._config.data_source_update_sink.update_status(
        DataSourceState[state_name], error)


def age(directory: Path) -> float:
    return sample(merged(directory), "vendorguard_flag_data_age_seconds", vendor="launchdarkly")


def refreshers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vendorguard-launchdarkly-flag-age"]


def test_flag_guard_writes_its_age_instead_of_computing_it(ld: Any, worker: Worker) -> None:
    """In multiprocess mode the flag data age is a written value, refreshed by one thread."""
    client = flag_client(ld, worker(1001))
    try:
        assert computed_at_scrape(client.vendorguard.vendor.families) == []
        assert len(refreshers()) == 1
    finally:
        client.close()


def test_flag_data_age_is_written_on_status_changes(ld: Any, worker: Worker, directory: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With no periodic refresh, the age still follows valid -> interrupted -> valid."""
    monkeypatch.setattr(ld, "AGE_REFRESH", 3600.0)
    client = flag_client(ld, worker(1001))
    try:
        report(client, "VALID")
        assert wait_until(lambda: age(directory) == 0.0)
        report(client, "INTERRUPTED")
        assert wait_until(lambda: age(directory) > 0.0)
        report(client, "VALID")
        assert wait_until(lambda: age(directory) == 0.0)
    finally:
        client.close()


def test_flag_data_age_grows_between_status_changes(ld: Any, worker: Worker, directory: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted once and then silent, the age written keeps growing."""
    monkeypatch.setattr(ld, "AGE_REFRESH", 0.02)
    client = flag_client(ld, worker(1001))
    try:
        report(client, "VALID")
        report(client, "INTERRUPTED")
        first = wait_until(lambda: age(directory))
        assert first > 0.0
        assert wait_until(lambda: age(directory) > first + 0.1, timeout=LIMIT)
    finally:
        client.close()


def test_closing_the_client_stops_the_refresh(ld: Any, worker: Worker, directory: Path) -> None:
    """Closed, the client leaves no refresh thread behind and an age of 0."""
    client = flag_client(ld, worker(1001))
    report(client, "VALID")
    report(client, "INTERRUPTED")
    assert wait_until(lambda: age(directory) > 0.0)
    client.close()
    assert refreshers() == []
    assert age(directory) == 0.0


def test_flag_data_age_is_the_stalest_live_worker(ld: Any, worker: Worker,
                                                  directory: Path) -> None:
    """One worker's flags current, another's interrupted: the age is the latter's (livemax)."""
    current, stale = flag_client(ld, worker(1001)), flag_client(ld, worker(1002))
    try:
        report(current, "VALID")
        report(stale, "VALID")
        report(stale, "INTERRUPTED")
        assert wait_until(lambda: age(directory) > 0.0)
        mark_process_dead(1002, str(directory))
        assert age(directory) == 0.0
    finally:
        stale.close()
        current.close()


def test_flag_data_age_follows_a_stream_outage(ld: Any, worker: Worker, directory: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Streaming from a loopback LaunchDarkly: 0, growing while it is down, 0 once it is back."""
    from ldclient import Config
    from ldclient.config import HTTPConfig

    from tests.integrations.ld_fake import FakeLD, flag

    monkeypatch.setattr(ld, "AGE_REFRESH", 0.05)
    with FakeLD({"f": flag("f", True)}) as fake:
        client = ld.LDClient(Config(
            "sdk-test", stream_uri=fake.url, base_uri=fake.url, events_uri=fake.url,
            send_events=False, initial_reconnect_delay=0.1, diagnostic_opt_out=True,
            http=HTTPConfig(connect_timeout=1, read_timeout=2)), start_wait=5,
            registry=worker(1001))
        try:
            assert client.is_initialized()
            assert age(directory) == 0.0
            fake.stop()
            assert wait_until(lambda: age(directory) > 0.3, timeout=LIMIT)
            fake.start()
            assert wait_until(lambda: age(directory) == 0.0, timeout=LIMIT)
        finally:
            client.close()


def test_one_process_computes_the_age_at_scrape(ld: Any, metrics: CollectorRegistry) -> None:
    """Without multiprocess mode there is no refresh thread: the scrape computes the age."""
    client = flag_client(ld, metrics)
    try:
        report(client, "VALID")
        report(client, "INTERRUPTED")
        assert refreshers() == []
        assert "vendorguard_flag_data_age_seconds" in computed_at_scrape(
            client.vendorguard.vendor.families)
        first = sample(metrics, "vendorguard_flag_data_age_seconds", vendor="launchdarkly")
        assert wait_until(lambda: sample(metrics, "vendorguard_flag_data_age_seconds",
                                         vendor="launchdarkly") > first)
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# a real gunicorn with several workers
# --------------------------------------------------------------------------------------------
@dataclass
class Server:
    port: int
    pgid: int
    log: Path

    def get(self, path: str, timeout: float = LIMIT) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return answer.status, answer.read().decode()
        finally:
            conn.close()

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, text = self.get("/metrics")
        assert status == 200, f"{text[-2000:]}\n{self.log.read_text()[-4000:]}"
        return {(s.name, frozenset(s.labels.items())): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait; then kill whatever is left of gunicorn's own process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=LIMIT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=LIMIT)


@contextlib.contextmanager
def serving(base: Path, config: str, **env_extra: str) -> Iterator[Server]:
    """gunicorn with WORKERS workers and tests/multiproc/``config`` on a loopback socket bound
    here, its workers sharing one metrics directory; stopped, process group and all, at exit."""
    pytest.importorskip("gunicorn")
    shared = base / "metrics"
    shared.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("VENDORGUARD_")}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(shared), NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), **env_extra)
    log = base / "gunicorn.log"
    # A socket bound here and handed over: no port to guess, and requests wait in its backlog
    # until a worker is up (once gunicorn holds the only copy, its death refuses them).
    with socket.create_server(("127.0.0.1", 0), backlog=128) as listener, \
            log.open("wb") as out:
        port = listener.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS),
             "--config", str(ROOT / "tests" / "multiproc" / config),
             "--bind", f"fd://{listener.fileno()}", "tests.multiproc.app:app"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),), start_new_session=True)
    server = Server(port, proc.pid, log)
    try:
        try:
            status, _ = server.get("/pid")
        except OSError as exc:
            pytest.fail(f"gunicorn did not answer ({exc!r}): {log.read_text()[-2000:]}")
        assert status == 200, log.read_text()[-2000:]
        with holding(server, WORKERS):
            pass  # every worker is up and has written its files: no scrape sees one half-made
        yield server
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("gunicorn"), "gunicorn_conf.py") as server:
        yield server


@contextlib.contextmanager
def holding(server: Server, count: int = 1) -> Iterator[list[int]]:
    """Keep ``count`` /hold calls inside their guards at once; a sync worker serves one request
    at a time, so each is in a worker of its own. Yields their pids."""
    with socket.create_server(("127.0.0.1", 0), backlog=count) as gate, \
            ThreadPoolExecutor(count) as pool, contextlib.ExitStack() as stack:
        gate.settimeout(LIMIT)
        path = f"/hold?port={gate.getsockname()[1]}"
        answers = [pool.submit(server.get, path) for _ in range(count)]
        conns = [stack.enter_context(gate.accept()[0]) for _ in range(count)]
        pids = []
        for conn in conns:
            conn.settimeout(LIMIT)
            pids.append(int(conn.makefile().readline()))
        try:
            yield pids
        finally:
            for conn in conns:
                conn.sendall(b"!")
        assert sorted(a.result(timeout=LIMIT) for a in answers) == sorted(
            (200, f"{pid} released") for pid in pids)


def test_counts_from_every_worker_add_up(gunicorn: Server) -> None:
    """Calls, fallbacks and durations served by several workers add up to the requests sent."""
    ok, failed = 40, 20
    with holding(gunicorn) as busy, ThreadPoolExecutor(6) as pool:  # the others serve these
        answers = list(pool.map(gunicorn.get, ["/call"] * ok + ["/fail"] * failed))
    bodies = [body.split() for _, body in answers]
    assert {status for status, _ in answers} == {200}
    assert [result for _, result in bodies] == ["widget"] * ok + ["queued"] * failed
    assert len(set(busy) | {int(pid) for pid, _ in bodies}) > 1
    got = gunicorn.scrape()
    get = {"vendor": "acme", "operation": "widgets.get"}
    put = {"vendor": "acme", "operation": "widgets.put"}
    assert value(got, "vendorguard_calls_total", **get, outcome="success") == ok
    assert value(got, "vendorguard_calls_total", **put, outcome="error") == failed
    assert value(got, "vendorguard_fallbacks_total", **put, reason="error") == failed
    assert value(got, "vendorguard_call_duration_seconds_count", **get, outcome="success") == ok
    assert value(got, "vendorguard_call_duration_seconds_count", **put, outcome="error") == failed
    assert value(got, "vendorguard_calls_in_flight", vendor="acme") == 0
    assert {s: value(got, "vendorguard_circuit_state", vendor="acme", circuit="acme", state=s)
            for s in CIRCUIT_STATES} == {s: float(s == "closed") for s in CIRCUIT_STATES}


def test_call_held_in_one_worker_is_in_flight(gunicorn: Server) -> None:
    """A call inside its guard in one worker is one call in flight, scraped via another."""
    with holding(gunicorn):
        during = gunicorn.scrape()
    after = gunicorn.scrape()
    assert value(during, "vendorguard_calls_in_flight", vendor="acme") == 1
    assert value(after, "vendorguard_calls_in_flight", vendor="acme") == 0


def generations(server: Server) -> dict[str, float]:
    return {dict(labels)["pid"]: v for (name, labels), v in server.scrape().items()
            if name == "vendorguard_config_generation"}


def test_config_generation_has_one_series_per_worker(gunicorn: Server) -> None:
    """Each live worker has its own generation series, labelled with its pid."""
    with holding(gunicorn, WORKERS) as pids:
        pass
    assert generations(gunicorn) == {str(pid): 0.0 for pid in pids}


def test_worker_killed_mid_call_is_no_longer_in_flight(gunicorn: Server) -> None:
    """A worker killed with a call in flight stops counting once gunicorn has reaped it."""
    with socket.create_server(("127.0.0.1", 0)) as gate, ThreadPoolExecutor(1) as pool:
        gate.settimeout(LIMIT)
        answer = pool.submit(gunicorn.get, f"/hold?port={gate.getsockname()[1]}")
        conn, _ = gate.accept()
        with conn:
            conn.settimeout(LIMIT)
            pid = int(conn.makefile().readline())
            assert value(gunicorn.scrape(), "vendorguard_calls_in_flight", vendor="acme") == 1
            assert os.getpgid(pid) == gunicorn.pgid  # one of the workers this test started
            os.kill(pid, signal.SIGKILL)
            with pytest.raises((OSError, http.client.HTTPException)):
                answer.result(timeout=LIMIT)
    # gunicorn reaps a worker (child_exit) before it forks the one replacing it: with every
    # worker serving again, the dead one is forgotten.
    with holding(gunicorn, WORKERS) as pids:
        pass
    assert pid not in pids
    assert value(gunicorn.scrape(), "vendorguard_calls_in_flight", vendor="acme") == 0


def test_preloaded_workers_write_their_state_after_fork(tmp_path: Path) -> None:
    """App loaded in the master: with metrics.after_fork() in post_fork, every worker reports
    the configuration generation it inherited."""
    with serving(tmp_path, "preload_conf.py", MULTIPROC_TEST_CONFIGURE="1") as server:
        with holding(server, WORKERS) as pids:
            pass
        found = generations(server)
    assert found == {str(pid): 1.0 for pid in [*pids, server.pgid]}
