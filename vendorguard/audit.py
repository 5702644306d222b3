"""The audit trail: what changed how vendors are guarded, when, by whom and why.

Every control action (force_open, force_close, disable, reset), configuration reload (applied
or refused), breaker transition and outbox dead letter is an :class:`Entry`. The latest
:data:`SIZE` entries are kept in memory (served by ``/vendors`` and the status page); with
:func:`set_file` (or ``audit.file`` in the configuration) each is also appended to a JSON-lines
file. Entries hold names, states, counts and what an operator typed (actor, reason): never call
arguments, vendor responses or exception messages.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["SIZE", "Entry", "clean", "clear", "entries", "record", "set_file"]

SIZE = 500
"""Entries kept in memory; older ones are dropped (the JSON-lines file keeps everything)."""
MAX_TEXT = 200
"""Longer actor and reason texts are cut to this many characters."""

_log = logging.getLogger("vendorguard")
_ring: collections.deque[Entry] = collections.deque(maxlen=SIZE)
_lock = threading.Lock()
_file: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One audited change.

    Attributes:
        time: wall-clock seconds since the epoch.
        kind: ``control``, ``config``, ``transition`` or ``dead_letter``.
        action: what happened, e.g. ``force_open``, ``applied``, ``refused``, ``open``.
        vendor: the vendor concerned, or ``None`` for a change to several.
        actor: who did it, where known (the control endpoint's client, ``"config"``...).
        reason: why, as the actor gave it; for a refused reload, the offending key.
        before, after: the state or generation before and after.
    """

    time: float
    kind: str
    action: str
    vendor: str | None = None
    actor: str | None = None
    reason: str | None = None
    before: Any = None
    after: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.time, "kind": self.kind, "action": self.action,
                "vendor": self.vendor, "actor": self.actor, "reason": self.reason,
                "before": self.before, "after": self.after}


def clean(text: Any, field: str) -> str | None:
    """An operator's text made safe to keep and show: printable, at most MAX_TEXT long."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"{field} must be a string, got {type(text).__name__}")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text[:MAX_TEXT] or None


def record(kind: str, action: str, *, vendor: str | None = None, actor: str | None = None,
           reason: str | None = None, before: Any = None, after: Any = None,
           log: bool = True) -> Entry:
    """Keep an entry (and append it to the file, if one is set); log it at WARNING unless the
    caller already did."""
    entry = Entry(time.time(), kind, action, vendor, actor, reason, before, after)
    with _lock:
        _ring.append(entry)
        path = _file
    if log:
        _log.warning("vendorguard: audit: %s %s%s%s%s", kind, action,
                     f" {vendor}" if vendor else "", f" by {actor}" if actor else "",
                     f" (reason: {reason})" if reason else "")
    if path is not None:
        _append(path, entry)
    return entry


def _append(path: str, entry: Entry) -> None:
    line = json.dumps(entry.as_dict(), separators=(",", ":"), default=str) + "\n"
    try:
        with _lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
    except OSError as exc:  # the audit file must never break a control action or a call
        _log.error("vendorguard: audit: cannot append to the audit file (%s)",
                   type(exc).__name__)


def entries(vendor: str | None = None, limit: int | None = None) -> list[Entry]:
    """The kept entries, oldest first (only ``vendor``'s when given; the last ``limit``)."""
    with _lock:
        kept = [e for e in _ring if vendor is None or e.vendor == vendor]
    return kept if limit is None else kept[-limit:] if limit > 0 else []


def set_file(path: str | os.PathLike[str] | None) -> None:
    """Also append every entry to the JSON-lines file at ``path`` (``None`` stops)."""
    global _file
    with _lock:
        _file = None if path is None else os.fspath(path)


def clear() -> None:
    """Forget the kept entries (for tests)."""
    with _lock:
        _ring.clear()
