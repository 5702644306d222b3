"""A durable outbox: write calls that could not reach their vendor are kept and delivered later.

::

    outbox = vg.Outbox("/var/lib/myapp/outbox.db")

    @sendgrid.guard("mail.send", fallback=outbox)    # on failure: enqueue, return a Receipt
    def send_welcome(address: str, name: str) -> None: ...

    outbox.start()                                   # a worker redelivers in the background

The outbox is a SQLite file (WAL, ``synchronous=FULL``: an enqueue that returned survives a
crash of the process), created readable by its owner only, since payloads may hold personal
data; nothing from a payload ever reaches logs or metrics (only exception type names are kept).
Delivery is at-least-once: a message is redelivered through the same vendor guard (its breaker,
retries and metrics, but not its fallback) with backoff, whenever the vendor's circuit lets
calls through; a caller error, or ``max_attempts`` failures, make it a dead letter
(:meth:`dead`, :meth:`requeue`). ``key`` deduplicates: a second enqueue with the key of a
message already queued or delivered returns the first one's receipt. Rows being delivered are
leased, so two workers (threads or processes sharing the file) never deliver one at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from . import audit
from .classify import Kind, Verdict, default_classifier
from .errors import BulkheadFullError, CircuitOpenError
from .fallback import Failure, FallbackStrategy, NoFallback
from .pipeline import is_async_callable
from .telemetry.metrics import families

__all__ = ["Message", "Outbox", "OutboxError", "Receipt"]

_log = logging.getLogger("vendorguard")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vendor TEXT NOT NULL,
    operation TEXT NOT NULL,
    key TEXT,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    last_error TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages (vendor, operation, key)
    WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, next_attempt);
"""
_COLUMNS = ("id, vendor, operation, key, payload, state, attempts, next_attempt, created, "
            "last_error")


class OutboxError(Exception):
    """The outbox cannot keep a message (closed, read-only, not an outbox file, ...)."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a caller gets instead of the vendor's answer: the message is kept for delivery."""

    id: int
    vendor: str
    operation: str
    key: str | None
    queued_at: float


@dataclass(frozen=True, slots=True)
class Message:
    """A kept message, as :meth:`Outbox.pending` and :meth:`Outbox.dead` list them."""

    id: int
    vendor: str
    operation: str
    key: str | None
    payload: Any
    state: str
    attempts: int
    next_attempt: float
    created: float
    last_error: str | None


class _Deliverer:
    """Redelivers a decorated function's calls through its guard, without the fallback."""

    def __init__(self, guard: Any, fn: Callable[..., Any]) -> None:
        self.guard = guard.without_fallback()
        self.fn = fn
        self.classify = guard.classifier
        self.is_async = is_async_callable(fn)

    def __call__(self, payload: Any) -> Any:
        args, kwargs = tuple(payload["args"]), dict(payload["kwargs"])
        if self.is_async:  # delivery runs on the worker (or drain's) thread, off any loop
            return asyncio.run(self.guard.run_async(self.fn, args, kwargs))
        return self.guard.run_sync(self.fn, args, kwargs)


RECOUNT = 1.0
"""Seconds an outbox's pending count is trusted before it counts the file again."""
TURNED_AWAY = -1
"""What delivering a message returns when the guard turned it away without asking the vendor
(its circuit or bulkhead): the drain leaves that vendor operation for its next round."""


def kind_of(classify: Any, exc: Exception) -> Kind:
    """How a failed delivery is classified (a classifier's bug counts as worth retrying)."""
    try:
        verdict = classify(exc)
    except Exception:
        return Kind.TRANSIENT
    return verdict.kind if isinstance(verdict, Verdict) else Kind(verdict)


def encode_payload(vendor: str, operation: str, payload: Any, key: str | None) -> str:
    """A message's payload as the JSON text an outbox keeps (checks it and its key)."""
    try:
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"outbox payloads must be JSON-serialisable ({vendor} "
                        f"{operation}): {type(exc).__name__}") from None
    if key is not None and not isinstance(key, str):
        raise TypeError(f"outbox key must be a string or None, got {type(key).__name__}")
    return text


def _encode_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return {"args": list(args), "kwargs": kwargs}


class _OutboxFallback(FallbackStrategy):
    """Enqueue a failed call and return its receipt."""

    def __init__(self, outbox: Outbox, encode: Callable[[tuple[Any, ...], dict[str, Any]], Any],
                 learn: bool, keep_ambiguous: bool) -> None:
        self.outbox, self.encode, self.learn = outbox, encode, learn
        self.keep_ambiguous = keep_ambiguous

    def serve(self, failure: Failure) -> Receipt:
        if failure.kind == "ambiguous" and not self.keep_ambiguous:
            raise NoFallback  # the vendor may have acted: redelivering could do it twice
        payload = self.encode(failure.args, failure.kwargs)
        return self.outbox.enqueue(failure.vendor, failure.operation, payload)

    def bind(self, guard: Any, fn: Any) -> None:
        if self.learn:
            self.outbox.register(guard.name, guard.operation, _Deliverer(guard, fn))


class Outbox(_OutboxFallback):
    """A durable outbox in a SQLite file; also a fallback (``fallback=outbox``) that keeps the
    failed call's arguments (which must be JSON-serialisable) and redelivers them by calling
    the decorated function again through its guard.

    Args:
        path: the SQLite file (created with mode 0600 if missing).
        max_attempts: delivery attempts before a message becomes a dead letter.
        backoff: seconds before the first redelivery; doubles per attempt, with jitter.
        max_backoff: the longest wait between redeliveries.
        lease: seconds a worker may hold a message it is delivering.
        keep_delivered: seconds a delivered message's key is kept, to deduplicate.
        keep_ambiguous: as a fallback, also keep calls whose failure was ambiguous (the
            vendor may have acted, e.g. a timeout after the request was sent): delivery then
            becomes at-least-once with possible duplicates. By default such a failure is
            raised to the caller instead.
        registry: Prometheus registry for the outbox metrics (default: the global one).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_attempts: int = 10,
                 backoff: float = 1.0, max_backoff: float = 300.0, lease: float = 60.0,
                 keep_delivered: float = 7 * 86400.0, keep_ambiguous: bool = False,
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(self, _encode_call, learn=True, keep_ambiguous=keep_ambiguous)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) \
                or max_attempts < 1:
            raise ValueError(f"Outbox.max_attempts must be an int >= 1, got {max_attempts!r}")
        for name, value in (("backoff", backoff), ("max_backoff", max_backoff),
                            ("lease", lease), ("keep_delivered", keep_delivered)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"Outbox.{name} must be > 0 seconds, got {value!r}")
        self.path = os.fspath(path)
        self.max_attempts, self.backoff, self.max_backoff = max_attempts, backoff, max_backoff
        self.lease, self.keep_delivered = lease, keep_delivered
        self._fam = families(registry)
        self._deliverers: dict[tuple[str, str], tuple[Callable[[Any], Any], Any]] = {}
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._db: sqlite3.Connection | None = self._open()
        self._counts: dict[str, int] | None = None
        self._counted = 0.0
        self._refresh_pending()

    # -- storage --------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as exc:
            raise OutboxError(f"cannot open outbox file {self.path!r}: {exc.strerror}") from exc
        try:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{self.path!r} is not a usable outbox (a SQLite database): "
                              f"{exc}") from exc
        return db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("the outbox is closed")
        return self._db

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._conn().execute(sql, params)
        except sqlite3.Error as exc:
            raise OutboxError(f"the outbox could not write to {self.path!r}: {exc}") from exc

    def _refresh_pending(self, enqueued: str | None = None) -> None:
        """Set the pending gauge from the file itself, so that every process sharing it
        reports what is really waiting (not what it enqueued or delivered itself). An enqueue
        within :data:`RECOUNT` seconds of the last count adds one to it instead: counting a
        long backlog at every enqueue would slow the calls that fill it."""
        now = time.monotonic()
        counts = self._counts
        if enqueued is not None and counts is not None and now - self._counted < RECOUNT:
            counts[enqueued] = counts.get(enqueued, 0) + 1
            self._fam.outbox_pending.labels(enqueued).set(counts[enqueued])
            return
        rows = self._read("SELECT vendor, COUNT(*) FROM messages WHERE state = 'pending' "
                          "GROUP BY vendor", ())
        counts = dict(rows)
        for vendor in {*counts, *(v for v, _ in getattr(self, "_deliverers", {}))}:
            self._fam.outbox_pending.labels(vendor).set(counts.get(vendor, 0))
        self._counts, self._counted = counts, now

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            with self._lock:
                return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"the outbox could not read {self.path!r}: {exc}") from exc

    # -- the API --------------------------------------------------------------------------------

    def register(self, vendor: str, operation: str, deliver: Callable[[Any], Any], *,
                 classify: Any = None) -> None:
        """How to redeliver payloads of (vendor, operation): ``deliver(payload)``, raising on
        failure (normally a guarded call, so the vendor's breaker and metrics apply).
        ``classify`` (default: the deliverer's guard's classifier, else the default one) tells
        a permanent failure (a caller error: dead at once) from one worth retrying."""
        if not callable(deliver):
            raise TypeError(f"deliver must be callable, got {deliver!r}")
        classify = classify or getattr(deliver, "classify", None) or default_classifier
        self._deliverers[vendor, operation] = (deliver, classify)
        self._fam.outbox_delivered.labels(vendor)
        self._fam.outbox_dead.labels(vendor)
        self._refresh_pending()

    def fallback(self, encode: Callable[[tuple[Any, ...], dict[str, Any]], Any], *,
                 keep_ambiguous: bool | None = None) -> FallbackStrategy:
        """A fallback that enqueues ``encode(args, kwargs)`` for the guard's vendor and
        operation; pair it with :meth:`register` to say how to deliver that payload."""
        keep = self.keep_ambiguous if keep_ambiguous is None else keep_ambiguous
        return _OutboxFallback(self, encode, learn=False, keep_ambiguous=keep)

    def enqueue(self, vendor: str, operation: str, payload: Any, key: str | None = None
                ) -> Receipt:
        """Keep ``payload`` (JSON-serialisable) for delivery; returns once it is on disk."""
        text = encode_payload(vendor, operation, payload, key)
        now = time.time()
        cursor = self._write(
            "INSERT INTO messages (vendor, operation, key, payload, next_attempt, created, "
            "updated) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (vendor, operation, key, text, now, now, now))
        if cursor.rowcount != 1:  # the key is taken (here or by another process): that one
            found = self._read("SELECT id, created FROM messages WHERE vendor = ? AND "
                               "operation = ? AND key = ?", (vendor, operation, key))
            return Receipt(found[0][0], vendor, operation, key, found[0][1])
        assert cursor.lastrowid is not None
        self._refresh_pending(enqueued=vendor)
        self._wake.set()
        return Receipt(cursor.lastrowid, vendor, operation, key, now)

    def pending(self, vendor: str | None = None) -> list[Message]:
        """Messages waiting for delivery (oldest first)."""
        return self._list("pending", vendor)

    def dead(self, vendor: str | None = None) -> list[Message]:
        """Dead letters: messages the outbox gave up on."""
        return self._list("dead", vendor)

    def _list(self, state: str, vendor: str | None) -> list[Message]:
        sql = f"SELECT {_COLUMNS} FROM messages WHERE state = ?"
        params: tuple[Any, ...] = (state,)
        if vendor is not None:
            sql, params = sql + " AND vendor = ?", (state, vendor)
        rows = self._read(sql + " ORDER BY id", params)
        return [Message(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7], r[8], r[9])
                for r in rows]

    def requeue(self, message_id: int) -> None:
        """Give a dead letter another full round of delivery attempts."""
        cursor = self._write("UPDATE messages SET state = 'pending', attempts = 0, "
                             "next_attempt = ?, lease_until = 0, updated = ? "
                             "WHERE id = ? AND state = 'dead'",
                             (time.time(), time.time(), message_id))
        if cursor.rowcount != 1:
            raise KeyError(f"no dead message with id {message_id}")
        self._refresh_pending()
        self._wake.set()

    # -- delivery -------------------------------------------------------------------------------

    def drain(self, limit: int | None = None) -> int:
        """Deliver the messages that are due, once each; returns how many were delivered.

        Async deliverers run in an event loop of their own on the calling thread: call this
        from a thread without a running loop (or use :meth:`start`)."""
        now = time.time()
        # Only what this process can deliver now: messages of vendors whose circuit rejects
        # are not even read (a backlog grows during an outage, and is drained after it).
        ready = [pair for pair in list(self._deliverers) if not self._circuit_open(*pair)]
        rows = self._read(
            f"SELECT {_COLUMNS} FROM messages WHERE state = 'pending' AND next_attempt <= ? "
            "AND lease_until <= ? AND (vendor, operation) IN (VALUES "
            + ", ".join(["(?, ?)"] * len(ready)) + ") ORDER BY id"
            + ("" if limit is None else f" LIMIT {int(limit)}"),
            (now, now, *(part for pair in ready for part in pair))) if ready else []
        delivered = 0
        turned_away: set[tuple[str, str]] = set()
        for row in rows:
            vendor, operation = row[1], row[2]
            found = self._deliverers.get((vendor, operation))
            if found is None or (vendor, operation) in turned_away:
                continue
            if not self._claim(row[0]):
                continue
            result = self._deliver(row, *found)
            if result == TURNED_AWAY:  # e.g. a half-open circuit's trials are taken: next round
                turned_away.add((vendor, operation))
            else:
                delivered += result
        if rows:
            self._write("DELETE FROM messages WHERE state = 'delivered' AND updated < ?",
                        (now - self.keep_delivered,))
            self._refresh_pending()
        return delivered

    def _circuit_open(self, vendor: str, operation: str) -> bool:
        from .registry import _registry
        found = _registry.get(vendor)
        return found is not None and found.circuit_for(operation).rejecting()

    def _claim(self, message_id: int) -> bool:
        now = time.time()
        cursor = self._write("UPDATE messages SET lease_until = ? WHERE id = ? AND "
                             "state = 'pending' AND lease_until <= ?",
                             (now + self.lease, message_id, now))
        return cursor.rowcount == 1

    def _deliver(self, row: tuple[Any, ...], deliver: Callable[[Any], Any],
                 classify: Any) -> int:
        message_id, vendor, attempts = row[0], row[1], row[6] + 1
        try:
            deliver(json.loads(row[4]))
        except (CircuitOpenError, BulkheadFullError):  # not an attempt: the vendor was not asked
            self._write("UPDATE messages SET lease_until = 0, next_attempt = ? WHERE id = ?",
                        (time.time() + self.backoff, message_id))
            return TURNED_AWAY
        except Exception as exc:
            dead = kind_of(classify, exc) == Kind.CALLER_ERROR or attempts >= self.max_attempts
            wait = min(self.max_backoff, self.backoff * 2 ** (attempts - 1))
            self._write("UPDATE messages SET state = ?, attempts = ?, next_attempt = ?, "
                        "lease_until = 0, updated = ?, last_error = ? WHERE id = ?",
                        ("dead" if dead else "pending", attempts,
                         time.time() + wait * random.uniform(0.5, 1.0), time.time(),
                         type(exc).__name__, message_id))
            if dead:
                self._fam.outbox_dead.labels(vendor).inc()
                _log.warning("vendorguard: outbox: %s message %d is a dead letter after %d "
                             "attempts (%s)", vendor, message_id, attempts, type(exc).__name__)
                audit.record("dead_letter", "dead_lettered", vendor=vendor, actor="outbox",
                             reason=type(exc).__name__, before="pending",
                             after={"message": message_id, "attempts": attempts}, log=False)
            return 0
        self._write("UPDATE messages SET state = 'delivered', attempts = ?, payload = '{}', "
                    "lease_until = 0, updated = ?, last_error = NULL WHERE id = ?",
                    (attempts, time.time(), message_id))
        self._fam.outbox_delivered.labels(vendor).inc()
        return 1

    def start(self, interval: float = 1.0) -> None:
        """Deliver in a background thread, checking at least every ``interval`` seconds."""
        if self._worker is not None and self._worker.is_alive():
            return
        self._conn()  # a closed outbox has nothing to deliver from
        self._stopping.clear()
        self._worker = threading.Thread(target=self._run, args=(interval,),
                                        name="vendorguard-outbox", daemon=True)
        self._worker.start()

    def _run(self, interval: float) -> None:
        while not self._stopping.is_set():
            try:
                self.drain()
            except OutboxError:
                _log.exception("vendorguard: outbox delivery failed")
            self._wake.wait(interval)
            self._wake.clear()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background worker (a delivery in progress finishes first)."""
        self._stopping.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout)
            self._worker = None

    def close(self) -> None:
        """Stop the worker and close the file; the outbox refuses messages afterwards."""
        self.stop()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
