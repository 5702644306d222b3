"""An outbox in PostgreSQL: :class:`vendorguard.Outbox` for hosts without a durable disk.

::

    from vendorguard.outbox_pg import PostgresOutbox   # pip install 'vendorguard[postgres]'

    outbox = PostgresOutbox("postgresql://app@db.internal/app")

    @sendgrid.guard("mail.send", fallback=outbox)      # on failure: enqueue, return a Receipt
    def send_welcome(address: str, name: str) -> None: ...

    outbox.start()                                     # every host may run a worker

Import it from this module: ``import vendorguard`` never imports psycopg. The interface and the
semantics are the SQLite outbox's (enqueue with a dedup ``key``, ``fallback=outbox``,
:meth:`register`, :meth:`fallback`, :meth:`pending`, :meth:`dead`, :meth:`requeue`,
:meth:`drain`, :meth:`start`/:meth:`stop`/:meth:`close`, dead letters, backoff, the
``vendorguard_outbox_*`` metrics, an audit entry per dead letter, payloads never in logs or
metrics); what differs is where messages live and who may deliver them:

- One table (``table``), created if missing under an advisory lock, so processes starting at
  once are safe. An enqueue that returned is committed.
- Any number of workers, on any number of hosts, deliver concurrently. A worker claims one due
  message at a time with ``SELECT ... FOR UPDATE SKIP LOCKED``, giving it a lease (``lease``
  seconds) and a token, and commits; it calls the vendor with no transaction open, then records
  the outcome in a new transaction (a failure only while it still holds the token). A worker
  that dies holding a message leaves it to the others once the lease has expired: delivery is
  at-least-once, and a message is duplicated only if its worker died, or took longer than the
  lease, after the vendor had it. Choose a lease longer than a delivery can take.
- Times (``next_attempt``, leases) are the database server's, so hosts' clocks need not agree.
- Connections come from a small pool (``pool_size``, or your ``connection factory``); a broken
  one is discarded and replaced, and a statement that failed because a pooled connection had
  gone stale is retried once on a new one. Errors raise :class:`vendorguard.OutboxError` with
  the server's primary message only (its detail can quote the values of a row).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.pq import ConnStatus, TransactionStatus
    from psycopg.rows import TupleRow, tuple_row
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("vendorguard.outbox_pg needs psycopg 3: "
                      "pip install 'vendorguard[postgres]'") from exc
from prometheus_client import CollectorRegistry

from . import audit
from .classify import Kind
from .errors import BulkheadFullError, CircuitOpenError
from .outbox import (
    TURNED_AWAY,
    Message,
    Outbox,
    OutboxError,
    Receipt,
    _encode_call,
    _OutboxFallback,
    encode_payload,
    kind_of,
)
from .telemetry.metrics import families

__all__ = ["PostgresOutbox"]

_log = logging.getLogger("vendorguard")
_T = TypeVar("_T")
_RECOUNT_EVERY = 1.0
"""Seconds between counts of the pending messages after enqueues (counted on every drain):
during an outage, counting the whole backlog on every enqueue would load the database."""
_Conn = psycopg.Connection[Any]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {t} (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        vendor text NOT NULL,
        operation text NOT NULL,
        key text,
        payload json NOT NULL,
        state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts integer NOT NULL DEFAULT 0,
        next_attempt timestamptz NOT NULL DEFAULT now(),
        lease_until timestamptz NOT NULL DEFAULT '-infinity',
        lease_token uuid,
        created timestamptz NOT NULL DEFAULT now(),
        updated timestamptz NOT NULL DEFAULT now(),
        last_error text)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS {key_index} ON {t} (vendor, operation, key) "
    "WHERE key IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS {pending_index} ON {t} (next_attempt, id) "
    "WHERE state = 'pending'",
    "CREATE INDEX IF NOT EXISTS {delivered_index} ON {t} (updated) WHERE state = 'delivered'",
)
_QUERIES = {
    "insert": "INSERT INTO {t} (vendor, operation, key, payload) VALUES (%s, %s, %s, %s::json) "
              "ON CONFLICT (vendor, operation, key) WHERE key IS NOT NULL DO NOTHING "
              "RETURNING id, extract(epoch FROM created)::float8",
    "find": "SELECT id, extract(epoch FROM created)::float8 FROM {t} "
            "WHERE vendor = %s AND operation = %s AND key = %s",
    "count": "SELECT vendor, count(*) FROM {t} WHERE state = 'pending' GROUP BY vendor",
    "list": "SELECT id, vendor, operation, key, payload::text, state, attempts, "
            "extract(epoch FROM next_attempt)::float8, extract(epoch FROM created)::float8, "
            "last_error FROM {t} WHERE state = %s AND (%s::text IS NULL OR vendor = %s) "
            "ORDER BY id",
    "requeue": "UPDATE {t} SET state = 'pending', attempts = 0, next_attempt = now(), "
               "lease_until = '-infinity', lease_token = NULL, updated = now() "
               "WHERE id = %s AND state = 'dead'",
    # Claim -> commit (autocommit: the statement is its own transaction). Only messages this
    # process can deliver now, due before the drain began (so a drain tries each one once),
    # longest due first.
    "claim": "UPDATE {t} SET lease_until = now() + make_interval(secs => %(lease)s), "
             "lease_token = %(token)s WHERE id = ("
             "SELECT id FROM {t} WHERE state = 'pending' AND next_attempt <= %(cutoff)s "
             "AND lease_until <= now() AND (vendor, operation) IN "
             "(SELECT * FROM unnest(%(vendors)s::text[], %(operations)s::text[])) "
             "ORDER BY next_attempt, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
             "RETURNING id, vendor, operation, payload::text, attempts",
    # A success is recorded whoever holds the lease now: the vendor has the message.
    "delivered": "UPDATE {t} SET state = 'delivered', attempts = attempts + 1, payload = '{{}}', "
                 "lease_until = '-infinity', lease_token = NULL, updated = now(), "
                 "last_error = NULL WHERE id = %s AND state = 'pending'",
    "failed": "UPDATE {t} SET attempts = attempts + 1, state = CASE WHEN %(give_up)s OR "
              "attempts + 1 >= %(max_attempts)s THEN 'dead' ELSE 'pending' END, "
              "next_attempt = now() + make_interval(secs => %(wait)s), "
              "lease_until = '-infinity', lease_token = NULL, updated = now(), "
              "last_error = %(error)s WHERE id = %(id)s AND lease_token = %(token)s "
              "AND state = 'pending' RETURNING state, attempts",
    "release": "UPDATE {t} SET lease_until = '-infinity', lease_token = NULL, "
               "next_attempt = now() + make_interval(secs => %s) "
               "WHERE id = %s AND lease_token = %s",
    "purge": "DELETE FROM {t} WHERE state = 'delivered' "
             "AND updated < now() - make_interval(secs => %s)",
}


def _usable(conn: _Conn) -> bool:
    return not conn.closed and conn.info.status == ConnStatus.OK


def _close_quietly(conn: _Conn) -> None:
    with contextlib.suppress(Exception):  # closing a broken socket can fail: it is gone
        conn.close()


class _Pool:
    """At most ``size`` connections in use at once; idle ones are kept for reuse."""

    def __init__(self, connect: Callable[[], _Conn], size: int, timeout: float) -> None:
        self._connect, self._size, self._timeout = connect, size, timeout
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self) -> tuple[_Conn, bool]:
        """A connection, and whether it was used before (it may have gone stale since)."""
        if not self._slots.acquire(timeout=self._timeout):
            raise OutboxError(f"no database connection free within {self._timeout:g} s "
                              f"(pool_size={self._size})")
        try:
            while True:
                with self._lock:
                    if self._closed:
                        raise OutboxError("the outbox is closed")
                    conn = self._idle.pop() if self._idle else None
                if conn is None:
                    return self._connect(), False
                if _usable(conn):
                    return conn, True
                _close_quietly(conn)
        except BaseException:
            self._slots.release()
            raise

    def put(self, conn: _Conn, *, discard: bool = False) -> None:
        try:
            keep = (not discard and _usable(conn)
                    and conn.info.transaction_status == TransactionStatus.IDLE)
            with self._lock:
                if keep and not self._closed:
                    self._idle.append(conn)
                    return
            _close_quietly(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)


def _query(conn: _Conn, query: sql.SQL | sql.Composed, params: Any = None
           ) -> psycopg.Cursor[TupleRow]:
    cursor = conn.cursor(row_factory=tuple_row)
    cursor.execute(query, params)
    return cursor


class PostgresOutbox(Outbox):
    """An outbox in a PostgreSQL table, shared by workers on several hosts (see the module).

    Args:
        dsn_or_connection_factory: a libpq connection string or URL, or a callable returning
            a new ``psycopg.Connection`` (the outbox sets it to autocommit and closes it).
        table: the table's name (``name`` or ``schema.name``), created if missing.
        max_attempts, backoff, max_backoff, keep_delivered, keep_ambiguous, registry: as for
            :class:`vendorguard.Outbox`.
        lease: seconds a worker may hold a message it is delivering; after that (a worker
            that died), other workers may deliver it again.
        pool_size: connections this outbox opens at most at once.
        pool_timeout: seconds to wait for a free connection before raising OutboxError.
    """

    def __init__(self, dsn_or_connection_factory: str | Callable[[], _Conn], *,
                 table: str = "vendorguard_outbox", max_attempts: int = 10,
                 backoff: float = 1.0, max_backoff: float = 300.0, lease: float = 60.0,
                 keep_delivered: float = 7 * 86400.0, keep_ambiguous: bool = False,
                 pool_size: int = 4, pool_timeout: float = 10.0,
                 registry: CollectorRegistry | None = None) -> None:
        # Outbox.__init__ would open a SQLite file: share its fallback part and API only.
        _OutboxFallback.__init__(self, self, _encode_call, learn=True,
                                 keep_ambiguous=keep_ambiguous)
        for name, count in (("max_attempts", max_attempts), ("pool_size", pool_size)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"PostgresOutbox.{name} must be an int >= 1, got {count!r}")
        for name, value in (("backoff", backoff), ("max_backoff", max_backoff),
                            ("lease", lease), ("keep_delivered", keep_delivered),
                            ("pool_timeout", pool_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"PostgresOutbox.{name} must be > 0 seconds, got {value!r}")
        parts = table.split(".") if isinstance(table, str) else []
        if not 1 <= len(parts) <= 2 or not all(_NAME.fullmatch(p) for p in parts):
            raise ValueError("PostgresOutbox.table must be a name or schema.name of letters, "
                             f"digits and _ (at most 48 each), got {table!r}")
        self.table = table
        self.max_attempts, self.backoff, self.max_backoff = max_attempts, backoff, max_backoff
        self.lease, self.keep_delivered = float(lease), float(keep_delivered)
        self._ident = sql.Identifier(*parts)
        fields = {"t": self._ident, "key_index": sql.Identifier(f"{parts[-1]}_key"),
                  "pending_index": sql.Identifier(f"{parts[-1]}_pending"),
                  "delivered_index": sql.Identifier(f"{parts[-1]}_delivered")}
        self._schema = [sql.SQL(s).format(**fields) for s in _SCHEMA]
        self._sql = {k: sql.SQL(q).format(t=self._ident)
                     for k, q in _QUERIES.items()}
        self._fam = families(registry)
        self._deliverers: dict[tuple[str, str], tuple[Callable[[Any], Any], Any]] = {}
        self._pending: dict[str, int] = {}  # as last counted, plus enqueues since
        self._counted = 0.0
        self._count_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pool: _Pool | None = _Pool(_connector(dsn_or_connection_factory), pool_size,
                                         pool_timeout)
        try:
            self._on_db("create its table", self._create)
        except BaseException:
            self.close()
            raise
        self._refresh_pending()

    # -- storage --------------------------------------------------------------------------------

    def _on_db(self, action: str, work: Callable[[_Conn], _T]) -> _T:
        """``work(connection)`` on a pooled connection; psycopg errors become OutboxError."""
        pool = self._pool
        if pool is None:
            raise OutboxError("the outbox is closed")
        for last_try in (False, True):
            try:
                conn, reused = pool.get()
            except psycopg.Error as exc:
                raise self._error(action, exc) from None
            try:
                result = work(conn)
            except psycopg.Error as exc:
                broken = not _usable(conn)
                pool.put(conn, discard=broken)
                if broken and reused and not last_try:
                    continue  # a connection that died while idle: once more, on a new one
                raise self._error(action, exc) from None
            except BaseException:
                pool.put(conn, discard=True)
                raise
            pool.put(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, action: str, exc: psycopg.Error) -> OutboxError:
        """Without the server's detail and context, which can quote a row's values."""
        primary = exc.diag.message_primary if isinstance(exc, psycopg.DatabaseError) else None
        text = primary or (str(exc).strip().splitlines() or [""])[0]
        state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
        return OutboxError(f"the outbox could not {action} (PostgreSQL table {self.table}): "
                           f"{type(exc).__name__}{state}: {text}")

    def _create(self, conn: _Conn) -> None:
        digest = hashlib.sha256(f"vendorguard.outbox:{self.table}".encode()).digest()
        with conn.transaction():
            _query(conn, sql.SQL("SELECT pg_advisory_xact_lock(%s)"),
                   (int.from_bytes(digest[:8], "big", signed=True),))
            found = _query(conn, sql.SQL("SELECT to_regclass(%s)"),
                           (self._ident.as_string(conn),)).fetchone()
            if found is None or found[0] is None:
                for statement in self._schema:
                    _query(conn, statement)

    def _refresh_pending(self, enqueued: str | None = None) -> None:
        """Set the pending gauge from the table, which every worker shares (best effort: the
        gauge is not worth failing an enqueue that is already committed). Enqueues count
        themselves in (see :meth:`enqueue`)."""
        try:
            rows = self._on_db("count pending messages",
                            lambda c: _query(c, self._sql["count"]).fetchall())
        except OutboxError as exc:
            _log.warning("vendorguard: outbox: pending gauge not updated: %s", exc)
            return
        with self._count_lock:
            self._counted = time.monotonic()
            vendors = {*self._pending, *(v for v, _ in list(self._deliverers))}
            self._pending = dict.fromkeys(vendors, 0) | dict(rows)
            for vendor, count in self._pending.items():
                self._fam.outbox_pending.labels(vendor).set(count)

    # -- the API --------------------------------------------------------------------------------

    def enqueue(self, vendor: str, operation: str, payload: Any, key: str | None = None
                ) -> Receipt:
        """Keep ``payload`` (JSON-serialisable) for delivery; returns once it is committed."""
        text = encode_payload(vendor, operation, payload, key)

        def insert(conn: _Conn) -> tuple[int, float, bool]:
            for _ in range(3):  # the key's message may be purged between the two statements
                row = _query(conn, self._sql["insert"], (vendor, operation, key, text)).fetchone()
                if row is not None:
                    return row[0], row[1], True
                row = _query(conn, self._sql["find"], (vendor, operation, key)).fetchone()
                if row is not None:
                    return row[0], row[1], False
            raise OutboxError(f"the outbox could not keep a {vendor} {operation} message: its "
                              "key was taken and released three times")

        message_id, created, new = self._on_db("write", insert)
        if new:
            if time.monotonic() - self._counted < _RECOUNT_EVERY:
                with self._count_lock:
                    self._pending[vendor] = self._pending.get(vendor, 0) + 1
                    self._fam.outbox_pending.labels(vendor).set(self._pending[vendor])
            else:
                self._refresh_pending()
            self._wake.set()
        return Receipt(message_id, vendor, operation, key, created)

    def _list(self, state: str, vendor: str | None) -> list[Message]:
        rows = self._on_db("read", lambda c: _query(c, self._sql["list"],
                                                 (state, vendor, vendor)).fetchall())
        return [Message(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7], r[8], r[9])
                for r in rows]

    def requeue(self, message_id: int) -> None:
        """Give a dead letter another full round of delivery attempts."""
        changed = self._on_db("write", lambda c: _query(c, self._sql["requeue"],
                                                     (message_id,)).rowcount)
        if changed != 1:
            raise KeyError(f"no dead message with id {message_id}")
        self._refresh_pending()
        self._wake.set()

    # -- delivery -------------------------------------------------------------------------------

    def drain(self, limit: int | None = None) -> int:
        """Deliver the messages that are due, once each; returns how many were delivered.

        Claims one message at a time, so other workers share the backlog. Async deliverers
        run in an event loop of their own on the calling thread."""
        on_worker = threading.current_thread() is self._worker
        cutoff: Any = None
        claimed = delivered = 0
        turned_away: set[tuple[str, str]] = set()
        while limit is None or claimed < limit:
            if on_worker and self._stopping.is_set():
                break
            pairs = [(v, o) for v, o in list(self._deliverers)
                     if (v, o) not in turned_away and not self._circuit_open(v, o)]
            if not pairs:
                break
            if cutoff is None:  # the server's clock: hosts' clocks need not agree
                cutoff = self._on_db("read the clock", lambda c: _query(
                    c, sql.SQL("SELECT now()")).fetchall()[0][0])
            row = self._claim_next(cutoff, pairs)
            if row is None:
                break
            claimed += 1
            result = self._deliver(row, *self._deliverers[row[1], row[2]])
            if result == TURNED_AWAY:  # e.g. a half-open circuit's trials are taken: next round
                turned_away.add((row[1], row[2]))
            else:
                delivered += result
        if claimed:
            self._on_db("purge delivered messages",
                     lambda c: _query(c, self._sql["purge"], (self.keep_delivered,)))
        self._refresh_pending()
        return delivered

    def _claim_next(self, cutoff: Any, pairs: Sequence[tuple[str, str]]
                    ) -> tuple[Any, ...] | None:
        token = uuid.uuid4()
        params = {"lease": self.lease, "token": token, "cutoff": cutoff,
                  "vendors": [v for v, _ in pairs], "operations": [o for _, o in pairs]}
        row = self._on_db("claim a message",
                       lambda c: _query(c, self._sql["claim"], params).fetchone())
        return None if row is None else (*row, token)

    def _deliver(self, row: tuple[Any, ...], deliver: Callable[[Any], Any],
                 classify: Any) -> int:
        message_id, vendor, _, text, attempts, token = row
        try:
            deliver(json.loads(text))
        except (CircuitOpenError, BulkheadFullError):  # not an attempt: the vendor was not asked
            self._on_db("release a message", lambda c: _query(
                c, self._sql["release"], (self.backoff, message_id, token)))
            return TURNED_AWAY
        except Exception as exc:
            wait = min(self.max_backoff, self.backoff * 2.0 ** min(attempts, 64))
            params = {"give_up": kind_of(classify, exc) == Kind.CALLER_ERROR,
                      "max_attempts": self.max_attempts,
                      "wait": wait * random.uniform(0.5, 1.0), "error": type(exc).__name__,
                      "id": message_id, "token": token}
            outcome = self._on_db("record a failed delivery",
                               lambda c: _query(c, self._sql["failed"], params).fetchone())
            if outcome is not None and outcome[0] == "dead":  # None: the lease was lost
                self._fam.outbox_dead.labels(vendor).inc()
                _log.warning("vendorguard: outbox: %s message %d is a dead letter after %d "
                             "attempts (%s)", vendor, message_id, outcome[1],
                             type(exc).__name__)
                audit.record("dead_letter", "dead_lettered", vendor=vendor, actor="outbox",
                             reason=type(exc).__name__, before="pending",
                             after={"message": message_id, "attempts": outcome[1]}, log=False)
            return 0
        self._on_db("record a delivery",
                 lambda c: _query(c, self._sql["delivered"], (message_id,)))
        self._fam.outbox_delivered.labels(vendor).inc()
        return 1

    def start(self, interval: float = 1.0) -> None:
        """Deliver in a background thread, checking at least every ``interval`` seconds."""
        if self._worker is not None and self._worker.is_alive():
            return
        if self._pool is None:
            raise OutboxError("the outbox is closed")
        self._stopping.clear()
        self._worker = threading.Thread(target=self._run, args=(interval,),
                                        name="vendorguard-outbox", daemon=True)
        self._worker.start()

    def close(self) -> None:
        """Stop the worker and close the connections; the outbox refuses messages afterwards."""
        self.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> PostgresOutbox:
        return self


def _connector(source: str | Callable[[], _Conn]) -> Callable[[], _Conn]:
    """A function opening a new autocommit connection from a DSN or the user's factory."""
    if isinstance(source, str):
        try:
            given = conninfo_to_dict(source)
        except psycopg.Error:
            raise ValueError("PostgresOutbox: not a valid PostgreSQL connection string "
                             "(not shown: it may hold a password)") from None
        extra: dict[str, Any] = {}
        if "application_name" not in given and "PGAPPNAME" not in os.environ:
            extra["application_name"] = "vendorguard-outbox"
        if "connect_timeout" not in given and "PGCONNECT_TIMEOUT" not in os.environ:
            extra["connect_timeout"] = 10

        def connect() -> _Conn:
            return psycopg.connect(source, autocommit=True, **extra)

        return connect
    if not callable(source):
        raise TypeError("PostgresOutbox needs a connection string or a callable returning a "
                        f"psycopg connection, got {type(source).__name__}")

    def from_factory() -> _Conn:
        conn = source()
        if not isinstance(conn, psycopg.Connection):
            raise TypeError(f"the connection factory returned {type(conn).__name__}, not a "
                            "psycopg.Connection")
        conn.autocommit = True
        return conn

    return from_factory
