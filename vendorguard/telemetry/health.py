"""``vendorguard.health()``: how every registered vendor is doing, as a JSON-ready dict.

Per vendor, ``status`` is ``ok``, ``degraded`` or ``down``:

- ``down``: its circuit is open or forced open (with one circuit per operation: all of them);
  or an integration reported it down;
- ``degraded``: a circuit is half-open or some per-operation circuits are open; over the recent
  window at least ``MIN_CALLS`` calls were made and ``DEGRADED_ERROR_RATE`` or more of them
  failed; abandoned calls are still running; or an integration reported it degraded;
- ``ok`` otherwise.

Overall, the application is ``down`` only when a *critical* vendor is down, and ``degraded``
when any vendor is not ok. Every value comes from code or from the vendor's own counters: no
call arguments and no exception messages.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .. import audit, config
from ..breaker import CLOSED, FORCED_OPEN, HALF_OPEN, OPEN, STATE_ORDER
from .metrics import OUTCOMES
from .window import quantile, read

if TYPE_CHECKING:
    from ..registry import Vendor

__all__ = ["DEGRADED_ERROR_RATE", "MIN_CALLS", "health", "vendor_health"]

_log = logging.getLogger("vendorguard")
MIN_CALLS = 10
DEGRADED_ERROR_RATE = 0.25
AUDIT_SHOWN = 50
"""The latest audit entries the report carries."""
_FAILED = tuple(OUTCOMES.index(o) for o in ("error", "timeout", "rejected"))
_SEVERITY = {"ok": 0, "degraded": 1, "down": 2}


def health(vendors: list[Vendor] | None = None) -> dict[str, Any]:
    """The health report of ``vendors`` (default: every registered vendor)."""
    from ..registry import vendors as registered
    from . import tracing

    tracing.refresh()
    report = {v.name: vendor_health(v) for v in (registered() if vendors is None else vendors)}
    overall = "ok"
    for entry in report.values():
        if entry["status"] == "down" and entry["critical"]:
            overall = "down"
        elif entry["status"] != "ok" and overall == "ok":
            overall = "degraded"
    settings = config.current()
    return {"status": overall, "time": time.time(), "vendors": report,
            "config": {"generation": settings.generation, "source": settings.source},
            "audit": [e.as_dict() for e in audit.entries(limit=AUDIT_SHOWN)]}


def vendor_health(v: Vendor) -> dict[str, Any]:
    """One vendor's entry of the health report."""
    totals, recent, seconds = v.window.recent(read(list(v.operations.values())))
    calls = sum(recent.outcomes)
    failed = sum(recent.outcomes[i] for i in _FAILED)
    judged = calls - recent.outcomes[OUTCOMES.index("caller_error")]
    error_rate = failed / judged if judged > 0 else None
    p50, p99 = quantile(0.5, recent.buckets), quantile(0.99, recent.buckets)

    circuits = v.circuits()
    states = [c.state for c in circuits.values()]
    state: str | None = max(states, key=STATE_ORDER.__getitem__) if states else None
    if v.breaker is None and state in (CLOSED, None):
        state = None  # no breaker policy: the circuit only carries runtime control
    open_count = sum(s in (OPEN, FORCED_OPEN) for s in states)
    status = "ok"
    if states and open_count == len(states):
        status = "down"
    elif open_count or HALF_OPEN in states:
        status = "degraded"
    if status == "ok" and (v.abandoned > 0 or (
            v.judge_error_rate and judged >= MIN_CALLS and error_rate is not None
            and error_rate >= DEGRADED_ERROR_RATE)):
        status = "degraded"
    details: list[str] = []
    extra: dict[str, Any] = {}
    reports = [v.reported] if v.reported is not None else []
    for check in list(v.health_checks):
        try:
            result = check()
        except Exception as exc:  # a check's bug must not break the health endpoint
            _log.error("vendorguard: health check of %s failed with %s", v.name,
                       type(exc).__name__)
            continue
        if result is not None:
            reports.append(result[:2])
            extra.update(result[2])
    for reported, text in reports:
        if _SEVERITY.get(reported, 0) > _SEVERITY[status]:
            status = reported
        if text:
            details.append(text)

    history = sorted((when, name, old, new) for name, c in circuits.items()
                     for old, new, when in list(c.history))[-10:]
    transitions = [{"circuit": name, "from": old, "to": new, "time": when}
                   for when, name, old, new in history]
    last = v.last_failure
    return {
        "status": status,
        "state": state,
        "critical": v.critical,
        "circuits": {name: {"state": c.state, "retry_after": round(c.retry_after(), 3)}
                     for name, c in circuits.items()},
        "window_seconds": round(seconds, 3),
        "calls": int(calls),
        "calls_per_second": round(calls / max(seconds, 1.0), 3),
        "outcomes": {o: int(n) for o, n in zip(OUTCOMES, recent.outcomes, strict=True)},
        "error_rate": None if error_rate is None else round(error_rate, 4),
        "latency": None if p50 is None or p99 is None else {
            "p50": round(p50, 6), "p99": round(p99, 6)},
        "fallbacks": int(recent.fallbacks),
        "calls_total": int(sum(totals.outcomes)),
        "fallbacks_total": int(totals.fallbacks),
        "in_flight": v.in_flight,
        "abandoned": v.abandoned,
        "last_failure": None if last is None else {
            "time": last[0], "type": last[1], "outcome": last[2]},
        "transitions": transitions,
        "control": [{"action": e.action, "reason": e.reason, "actor": e.actor,
                     "time": e.time}
                    for e in audit.entries(v.name) if e.kind == "control"][-10:],
        "detail": "; ".join(details) or None,
        **extra,
    }
