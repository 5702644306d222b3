"""The PostgreSQL outbox on a real, throwaway PostgreSQL server: the SQLite outbox's contract
(its tests, run again here), and what a shared database adds: workers in several processes,
claims with SKIP LOCKED and leases, transactions, connections, table creation."""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests import services
from tests.services import (
    REQUIRE_SERVICES_ENV,
    postgres_bindir,
    postgres_server,
    require_postgres,
    services_required,
)

if not services_required():
    pytest.importorskip("psycopg", reason="psycopg is not installed (the [postgres] extra)")

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

import vendorguard as vg
from tests.pg_child import OPERATION as CHILD_OPERATION
from tests.pg_child import VENDOR as CHILD_VENDOR
from tests.pg_child import WORKER_HEADER
from tests.pg_child import payload as child_payload
from tests.test_outbox import (  # noqa: F401 - the SQLite outbox's contract, run on PostgreSQL
    EMAIL,
    OP,
    TOKEN,
    VENDOR,
    Mailbox,
    Recorder,
    drain_until,
    guarded_send,
    test_ambiguous_failure_is_kept_only_when_asked,
    test_async_guarded_function_is_enqueued_and_delivered,
    test_backoff_settings_are_honoured,
    test_call_rejected_by_open_circuit_is_enqueued,
    test_caller_error_is_raised_not_enqueued,
    test_caller_error_on_redelivery_is_dead_at_once,
    test_closed_outbox_as_fallback_raises_fallback_error,
    test_closed_outbox_refuses_enqueue,
    test_dead_letter_counts_in_metrics,
    test_dead_letter_keeps_only_the_exception_type_name,
    test_delivery_counts_in_metrics,
    test_delivery_resumes_when_the_circuit_closes,
    test_drain_delivers_through_the_vendor_guard,
    test_each_message_is_delivered_once_across_drains,
    test_expired_lease_is_delivered_again,
    test_failed_call_counts_in_pending_gauge,
    test_failed_call_is_pending_with_its_arguments,
    test_failed_call_returns_a_receipt,
    test_failed_delivery_waits_for_its_backoff,
    test_failed_redelivery_does_not_use_the_fallback,
    test_key_deduplicates_after_delivery,
    test_key_deduplicates_in_the_pending_gauge,
    test_key_enqueued_at_once_by_many_writers_is_one_message,
    test_key_returns_the_first_receipt,
    test_message_being_delivered_is_not_delivered_by_another_outbox,
    test_message_is_dead_after_max_attempts,
    test_messages_survive_close_and_reopen,
    test_nothing_is_delivered_while_the_circuit_is_open,
    test_payload_never_reaches_logs,
    test_payload_never_reaches_metrics,
    test_pending_gauge_never_goes_negative_across_processes,
    test_proxy_method_is_enqueued_and_delivered,
    test_reopened_outbox_reports_its_pending_messages,
    test_requeue_makes_a_dead_letter_pending_again,
    test_requeue_of_a_pending_message_raises_key_error,
    test_requeue_of_an_unknown_id_raises_key_error,
    test_requeued_message_is_delivered,
    test_same_key_for_another_operation_is_another_message,
    test_start_twice_runs_one_worker,
    test_stop_ends_the_worker_thread,
    test_successful_call_enqueues_nothing,
    test_two_outboxes_on_one_file_deliver_each_message_once,
    test_unknown_operation_is_left_pending,
    test_unserialisable_call_raises_fallback_error,
    test_unserialisable_payload_is_refused,
    test_worker_delivers_without_drain,
)
from vendorguard import audit
from vendorguard.outbox_pg import PostgresOutbox

pytestmark = pytest.mark.services

CHILD = Path(__file__).with_name("pg_child.py")
REPO = Path(__file__).resolve().parent.parent
MESSAGES = 1000
WORKERS = 4


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 for the whole session: its DSN."""
    with postgres_server(require_postgres()) as dsn:
        yield dsn


@pytest.fixture
def table() -> str:
    """A table of this test's own, so tests share the server but nothing else."""
    return f"outbox_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def admin(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own, to look at (and lock) the outbox's rows."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def make_outbox(pg_dsn: str, table: str, metrics: CollectorRegistry
                ) -> Iterator[Callable[..., PostgresOutbox]]:
    """Build outboxes (on the test's table and metrics unless told), closed at teardown."""
    made: list[PostgresOutbox] = []

    def make(dsn: str | None = None, **kwargs: Any) -> PostgresOutbox:
        kwargs.setdefault("registry", metrics)
        kwargs.setdefault("table", table)
        outbox = PostgresOutbox(dsn or pg_dsn, **kwargs)
        made.append(outbox)
        return outbox

    yield make
    for outbox in made:
        outbox.close()


@pytest.fixture
def outbox(make_outbox: Callable[..., PostgresOutbox]) -> PostgresOutbox:
    return make_outbox()


@pytest.fixture
def fast_outbox(make_outbox: Callable[..., PostgresOutbox]) -> PostgresOutbox:
    """An outbox whose failed messages fall due again within a millisecond, 3 attempts."""
    return make_outbox(max_attempts=3, backoff=0.001, max_backoff=0.001)


@pytest.fixture
def vendor(metrics: CollectorRegistry) -> vg.Vendor:
    return vg.Vendor(VENDOR, retry=None, breaker=None, registry=metrics)


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


def rows(admin: psycopg.Connection[Any], table: str, query: str, *params: Any) -> list[Any]:
    """Run ``query`` with ``{t}`` standing for the test's table."""
    composed = sql.SQL(query).format(t=sql.Identifier(table))
    return admin.execute(composed, params or None).fetchall()


# -- the same interface -------------------------------------------------------------------------


def test_postgres_outbox_is_an_outbox(outbox: PostgresOutbox) -> None:
    """It is a vg.Outbox (a fallback strategy too), and `with` gives the outbox itself."""
    assert isinstance(outbox, vg.Outbox)
    with outbox as entered:
        assert entered is outbox


def test_dead_letter_is_audited_without_the_payload(vendor: vg.Vendor, fast_outbox: PostgresOutbox,
                                                    mailbox: Mailbox) -> None:
    """A dead letter is one audit entry, as the SQLite outbox writes it, with nothing from the
    payload."""
    receipt = guarded_send(vendor, fast_outbox, mailbox)(EMAIL, subject="reset", token=TOKEN)
    drain_until(fast_outbox, lambda: bool(fast_outbox.dead()))
    [entry] = [e for e in audit.entries() if e.kind == "dead_letter"]
    assert (entry.action, entry.vendor, entry.actor, entry.reason, entry.before, entry.after) == (
        "dead_lettered", VENDOR, "outbox", "ConnectionRefusedError", "pending",
        {"message": receipt.id, "attempts": 3})
    assert EMAIL not in json.dumps(entry.as_dict())
    assert TOKEN not in json.dumps(entry.as_dict())


def test_drain_limit_bounds_the_deliveries(outbox: PostgresOutbox) -> None:
    """drain(limit) delivers at most limit messages; the rest wait for the next drain."""
    recorder = Recorder()
    outbox.register(VENDOR, OP, recorder)
    for n in range(5):
        outbox.enqueue(VENDOR, OP, {"n": n})
    assert (outbox.drain(limit=2), len(outbox.pending()), outbox.drain()) == (2, 3, 3)
    assert recorder.counts == Counter(range(5))


# -- storage and transactions -------------------------------------------------------------------


def test_enqueue_is_committed_when_it_returns(outbox: PostgresOutbox,
                                              admin: psycopg.Connection[Any], table: str) -> None:
    """Another connection sees an enqueued message as soon as enqueue() has returned."""
    receipt = outbox.enqueue(VENDOR, OP, {"to": EMAIL}, key="order-1")
    assert rows(admin, table, "SELECT vendor, operation, key, payload::text, state FROM {t} "
                "WHERE id = %s", receipt.id) == [(VENDOR, OP, "order-1", json.dumps(
                    {"to": EMAIL}, separators=(",", ":")), "pending")]


def test_outboxes_starting_together_create_the_table_once(pg_dsn: str, table: str,
                                                          admin: psycopg.Connection[Any]
                                                          ) -> None:
    """Six outboxes created at once on a missing table all start; there is one table."""
    start = threading.Barrier(6)
    made: list[PostgresOutbox] = []
    errors: list[BaseException] = []

    def create() -> None:
        start.wait(timeout=10)
        try:
            made.append(PostgresOutbox(pg_dsn, table=table, registry=CollectorRegistry()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    try:
        assert errors == []
        assert len(made) == 6
        receipt = made[0].enqueue(VENDOR, OP, {"n": 0})
        assert [m.id for m in made[5].pending()] == [receipt.id]
    finally:
        for outbox in made:
            outbox.close()
    assert admin.execute("SELECT count(*) FROM pg_class WHERE relname = %s AND relkind = 'r'",
                         (table,)).fetchone() == (1,)


def test_schema_qualified_table(make_outbox: Callable[..., PostgresOutbox],
                                admin: psycopg.Connection[Any], table: str) -> None:
    """table="schema.name" keeps the messages in that schema."""
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(table)))
    outbox = make_outbox(table=f"{table}.outbox")
    receipt = outbox.enqueue(VENDOR, OP, {"n": 0})
    assert [m.id for m in outbox.pending()] == [receipt.id]
    assert admin.execute("SELECT to_regclass(%s) IS NOT NULL",
                         (f"{table}.outbox",)).fetchone() == (True,)


def test_vendor_is_called_with_the_claim_committed_and_no_lock_held(
        outbox: PostgresOutbox, admin: psycopg.Connection[Any], table: str) -> None:
    """While the vendor is called, the claim (lease and token) is committed and the worker
    holds no lock and no open transaction."""
    seen: list[tuple[Any, ...]] = []

    def deliver(payload: Any) -> None:
        with admin.transaction():  # NOWAIT: raises at once if the worker still held the row
            [claim] = rows(admin, table, "SELECT lease_until > now(), lease_token IS NOT NULL "
                           "FROM {t} WHERE state = 'pending' FOR UPDATE NOWAIT")
        [(open_transactions,)] = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
            "AND pid <> pg_backend_pid()").fetchall()
        seen.append((*claim, open_transactions))

    outbox.register(VENDOR, OP, deliver)
    outbox.enqueue(VENDOR, OP, {"n": 0})
    assert outbox.drain() == 1
    assert seen == [(True, True, 0)]


def test_a_locked_message_is_skipped_not_waited_for(outbox: PostgresOutbox,
                                                    admin: psycopg.Connection[Any],
                                                    table: str) -> None:
    """A message another transaction has locked is skipped (SKIP LOCKED): drain() delivers the
    next one without waiting, and the locked one later."""
    recorder = Recorder()
    outbox.register(VENDOR, OP, recorder)
    locked = outbox.enqueue(VENDOR, OP, {"n": 0})
    outbox.enqueue(VENDOR, OP, {"n": 1})
    delivered: list[int] = []
    with admin.transaction():
        rows(admin, table, "SELECT id FROM {t} WHERE id = %s FOR UPDATE", locked.id)
        thread = threading.Thread(target=lambda: delivered.append(outbox.drain()))
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive(), "drain() waited for the locked row"
    assert (delivered, recorder.counts) == ([1], Counter({1: 1}))
    assert outbox.drain() == 1
    assert recorder.counts == Counter({0: 1, 1: 1})


def test_late_failure_after_a_lost_lease_changes_nothing(
        make_outbox: Callable[..., PostgresOutbox], admin: psycopg.Connection[Any],
        table: str) -> None:
    """A worker whose lease expired while it delivered cannot record its late failure over the
    worker that holds the message now: outcomes are written only with the claim's token."""
    first, second = make_outbox(lease=0.2), make_outbox(lease=30.0)
    first_inside, first_release = threading.Event(), threading.Event()
    second_inside, second_release = threading.Event(), threading.Event()

    def late_failure(payload: Any) -> None:
        first_inside.set()
        first_release.wait(timeout=10)
        raise ConnectionRefusedError("vendor unavailable")

    def slow_success(payload: Any) -> None:
        second_inside.set()
        second_release.wait(timeout=10)

    def claim_when_the_lease_expires() -> None:
        deadline = time.monotonic() + 10
        while not second_inside.is_set() and time.monotonic() < deadline:
            second.drain()

    first.register(VENDOR, OP, late_failure)
    second.register(VENDOR, OP, slow_success)
    first.enqueue(VENDOR, OP, {"n": 0})
    threads = [threading.Thread(target=first.drain),
               threading.Thread(target=claim_when_the_lease_expires)]
    threads[0].start()
    try:
        assert first_inside.wait(timeout=10)
        threads[1].start()
        assert second_inside.wait(timeout=10)
        first_release.set()
        threads[0].join(timeout=10)
        assert rows(admin, table, "SELECT state, attempts, last_error, lease_until > now() "
                    "FROM {t}") == [("pending", 0, None, True)]
    finally:
        first_release.set()
        second_release.set()
        for thread in threads:
            if thread.ident is not None:  # started
                thread.join(timeout=10)
    assert rows(admin, table, "SELECT state, attempts, last_error FROM {t}") == [
        ("delivered", 1, None)]


def test_database_errors_do_not_quote_the_payload(outbox: PostgresOutbox,
                                                  admin: psycopg.Connection[Any], table: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """An enqueue the database refuses raises OutboxError with the server's primary message
    only: its detail, which quotes the row, reaches neither the error, its traceback nor logs."""
    constraint = "ALTER TABLE {t} ADD CONSTRAINT no_tokens CHECK (payload::text NOT LIKE '%tok_%')"
    admin.execute(sql.SQL(constraint).format(t=sql.Identifier(table)))
    with caplog.at_level("DEBUG", logger="vendorguard"), \
            pytest.raises(vg.OutboxError, match="CheckViolation") as caught:
        outbox.enqueue(VENDOR, OP, {"to": EMAIL, "token": TOKEN})
    told = "".join(traceback.format_exception(caught.value)) + caplog.text
    assert EMAIL not in told
    assert TOKEN not in told


# -- connections --------------------------------------------------------------------------------


def test_a_broken_connection_is_replaced(make_outbox: Callable[..., PostgresOutbox],
                                         pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    """After the server ended the outbox's connections, the next enqueue opens a new one."""
    app = f"vg-test-{uuid.uuid4().hex[:8]}"
    outbox = make_outbox(f"{pg_dsn} application_name={app}")
    first = outbox.enqueue(VENDOR, OP, {"n": 0})
    [(ended,)] = admin.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
        "WHERE application_name = %s", (app,)).fetchall()
    assert ended >= 1
    second = outbox.enqueue(VENDOR, OP, {"n": 1})
    assert [m.id for m in outbox.pending()] == [first.id, second.id]


def test_connection_factory_with_its_own_row_factory(make_outbox: Callable[..., PostgresOutbox],
                                                     pg_dsn: str) -> None:
    """A factory's connections are used as given (autocommit is set; a dict row factory does
    not matter)."""
    made: list[psycopg.Connection[Any]] = []

    def factory() -> psycopg.Connection[Any]:
        conn = psycopg.connect(pg_dsn, row_factory=dict_row)
        made.append(conn)
        return conn

    outbox = make_outbox(factory)
    recorder = Recorder()
    outbox.register(VENDOR, OP, recorder)
    outbox.enqueue(VENDOR, OP, {"n": 0})
    assert ([m.payload for m in outbox.pending()], outbox.drain()) == ([{"n": 0}], 1)
    assert made
    assert all(conn.autocommit for conn in made)
    outbox.close()
    assert all(conn.closed for conn in made)


def test_pool_size_bounds_the_connections(make_outbox: Callable[..., PostgresOutbox],
                                          pg_dsn: str) -> None:
    """Eight threads enqueueing at once through pool_size=2 all succeed on two connections."""
    made: list[psycopg.Connection[Any]] = []

    def factory() -> psycopg.Connection[Any]:
        made.append(psycopg.connect(pg_dsn))
        return made[-1]

    outbox = make_outbox(factory, pool_size=2)
    start = threading.Barrier(8)
    receipts: list[vg.Receipt] = []
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        start.wait(timeout=10)
        try:
            receipts.append(outbox.enqueue(VENDOR, OP, {"n": n}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert len({r.id for r in receipts}) == 8
    assert 1 <= len(made) <= 2


def test_unreachable_database_raises_outbox_error_without_the_password(table: str) -> None:
    """An outbox whose server is down fails at construction with OutboxError; the password in
    its DSN is nowhere in the error."""
    secret = "s3cret-pw-4821"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(vg.OutboxError, match="create its table") as caught:
        PostgresOutbox(f"postgresql://vg:{secret}@127.0.0.1:{port}/vg?connect_timeout=5",
                       table=table, registry=CollectorRegistry())
    assert secret not in "".join(traceback.format_exception(caught.value))


def test_invalid_dsn_raises_value_error_without_echoing_it(table: str) -> None:
    """A connection string libpq cannot parse is a ValueError that does not repeat it."""
    with pytest.raises(ValueError, match="connection string") as caught:
        PostgresOutbox("host=127.0.0.1 password=s3cret-pw-4821 port", table=table)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": 2.5}, "max_attempts"),
    ({"backoff": 0}, "backoff"),
    ({"max_backoff": -1}, "max_backoff"),
    ({"lease": 0}, "lease"),
    ({"pool_size": 0}, "pool_size"),
    ({"pool_timeout": 0}, "pool_timeout"),
    ({"table": "bad-name"}, "table"),
    ({"table": "a.b.c"}, "table"),
    ({"table": "x; DROP TABLE y"}, "table"),
], ids=["max_attempts-0", "max_attempts-float", "backoff-0", "max_backoff-negative", "lease-0",
        "pool_size-0", "pool_timeout-0", "table-dash", "table-three-parts", "table-injection"])
def test_invalid_argument_raises_value_error(kwargs: dict[str, Any], field: str) -> None:
    """An invalid argument raises ValueError naming it, before any connection is made."""
    with pytest.raises(ValueError, match=field):
        PostgresOutbox(lambda: pytest.fail("connected"), registry=CollectorRegistry(), **kwargs)


# -- several worker processes -------------------------------------------------------------------


class CountingVendor:
    """A fake vendor on 127.0.0.1 that counts the messages POSTed to it by number: every
    request it ``received``, and those it ``answered`` (200). The first request for ``hold``
    is held unanswered until :attr:`release` is set, then dropped: a vendor whose answer never
    reached its worker."""

    def __init__(self, expect: int, hold: int | None = None) -> None:
        self.expect, self.hold = expect, hold
        self.received: Counter[int] = Counter()
        self.answered: Counter[int] = Counter()
        self.seen: list[tuple[int, int, float]] = []  # (number, worker pid, monotonic time)
        self.held, self.release, self.done = (threading.Event(), threading.Event(),
                                              threading.Event())
        self.held_pid = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.handle(self, json.loads(body)["n"], int(self.headers[WORKER_HEADER]))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *args: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/send"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, handler: BaseHTTPRequestHandler, number: int, pid: int) -> None:
        with self._lock:
            self.received[number] += 1
            self.seen.append((number, pid, time.monotonic()))
            hold = number == self.hold and self.received[number] == 1
            if hold:
                self.held_pid = pid
        if hold:
            self.held.set()
            self.release.wait(timeout=30)
            return  # no answer: the worker is gone
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        with self._lock:
            self.answered[number] += 1
            if len(self.answered) == self.expect:
                self.done.set()

    def deliveries(self, number: int) -> list[tuple[int, float]]:
        """(worker pid, time) of each request for message ``number``."""
        with self._lock:
            return [(pid, at) for n, pid, at in self.seen if n == number]

    def __enter__(self) -> CountingVendor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


class Workers:
    """``count`` processes running tests/pg_child.py; whatever is left is killed on exit."""

    def __init__(self, count: int, dsn: str, table: str, url: str, lease: float,
                 logs: Path) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        for i in range(count):
            with open(logs / f"worker{i}.log", "w") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(CHILD), dsn, table, url, str(lease)], cwd=REPO,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True))
        self.logs = logs

    def go(self, timeout: float = 30.0) -> None:
        """Wait until every worker is ready, then let them all start delivering at once."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], max(0, deadline - time.monotonic()))
            assert ready, f"a worker was not ready within {timeout:g} s: {self.stderr()}"
            assert proc.stdout.readline() == "ready\n", self.stderr()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def kill(self, pid: int) -> None:
        """SIGKILL the worker ``pid`` (one of these) and reap it."""
        [proc] = [p for p in self.procs if p.pid == pid]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self.procs.remove(proc)

    def finish(self, timeout: float = 20.0) -> list[int | None]:
        """Close every worker's stdin (it stops, finishing its delivery) and reap it."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.close()
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        return [proc.returncode for proc in self.procs]

    def stderr(self) -> str:
        return "".join(p.read_text() for p in sorted(self.logs.glob("worker*.log")))

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None and not stream.closed:
                    stream.close()


def enqueue_messages(dsn: str, table: str, count: int) -> None:
    with PostgresOutbox(dsn, table=table, registry=CollectorRegistry()) as outbox:
        for number in range(count):
            outbox.enqueue(CHILD_VENDOR, CHILD_OPERATION, child_payload(number))


def left_over(dsn: str, table: str) -> tuple[int, int]:
    """(pending, dead) messages left in the table."""
    with PostgresOutbox(dsn, table=table, registry=CollectorRegistry()) as outbox:
        return len(outbox.pending()), len(outbox.dead())


def test_four_processes_deliver_each_message_exactly_once(pg_dsn: str, table: str,
                                                          tmp_path: Path) -> None:
    """Four worker processes draining 1,000 messages at once deliver each exactly once."""
    enqueue_messages(pg_dsn, table, MESSAGES)
    with CountingVendor(expect=MESSAGES) as fake, \
            Workers(WORKERS, pg_dsn, table, fake.url, lease=30.0, logs=tmp_path) as workers:
        workers.go()
        assert fake.done.wait(timeout=30), f"{len(fake.answered)} delivered; {workers.stderr()}"
        assert workers.finish() == [0] * WORKERS, workers.stderr()
    assert fake.received == Counter(range(MESSAGES)), "a message reached the vendor twice"
    assert fake.answered == Counter(range(MESSAGES))
    by_worker = Counter(pid for _, pid, _ in fake.seen)
    assert len(by_worker) == WORKERS, f"not every worker took part: {by_worker}"
    assert left_over(pg_dsn, table) == (0, 0)


def test_sigkilled_worker_leaves_its_message_to_the_others_after_the_lease(
        pg_dsn: str, table: str, tmp_path: Path) -> None:
    """A worker SIGKILLed while the vendor holds its delivery: the others deliver that message
    once its lease has expired; every message is delivered, and the only duplicate is the one
    the dead worker had claimed."""
    lease, held = 1.0, MESSAGES // 2
    enqueue_messages(pg_dsn, table, MESSAGES)
    with CountingVendor(expect=MESSAGES, hold=held) as fake, \
            Workers(WORKERS, pg_dsn, table, fake.url, lease=lease, logs=tmp_path) as workers:
        workers.go()
        assert fake.held.wait(timeout=30), workers.stderr()
        victim = fake.held_pid
        workers.kill(victim)
        fake.release.set()
        assert fake.done.wait(timeout=30), f"{len(fake.answered)} delivered; {workers.stderr()}"
        assert workers.finish() == [0] * (WORKERS - 1), workers.stderr()
    assert fake.answered == Counter(range(MESSAGES)), "every message delivered, once answered"
    assert fake.received - Counter(range(MESSAGES)) == Counter({held: 1})
    [(first_pid, first_at), (second_pid, second_at)] = fake.deliveries(held)
    assert first_pid == victim
    assert second_pid != victim
    assert second_at - first_at >= lease * 0.75, "redelivered before its lease could expire"
    assert left_over(pg_dsn, table) == (0, 0)


# -- tests/services.py --------------------------------------------------------------------------


def fake_postgres(bindir: Path) -> Path:
    """A directory with stand-ins for the PostgreSQL programs the fixture runs."""
    bindir.mkdir(parents=True)
    for name in ("initdb", "postgres", "pg_ctl", "pg_isready"):
        (bindir / name).write_text("#!/bin/sh\nexit 0\n")
        (bindir / name).chmod(0o755)
    return bindir


def test_postgres_bindir_finds_the_newest_debian_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off PATH, the newest /usr/lib/postgresql/<version>/bin is used (by number, 9 < 15)."""
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(services, "POSTGRES_LIB", tmp_path)
    fake_postgres(tmp_path / "9" / "bin")
    newest = fake_postgres(tmp_path / "15" / "bin")
    assert postgres_bindir() == newest


def test_require_postgres_skips_when_missing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """No PostgreSQL: the test is skipped, saying how to install it."""
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(services, "POSTGRES_LIB", tmp_path)
    monkeypatch.delenv(REQUIRE_SERVICES_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        require_postgres()


def test_require_postgres_fails_when_services_required(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """No PostgreSQL under VENDORGUARD_REQUIRE_SERVICES=1: the test fails."""
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(services, "POSTGRES_LIB", tmp_path)
    monkeypatch.setenv(REQUIRE_SERVICES_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="VENDORGUARD_REQUIRE_SERVICES=1"):
        require_postgres()
