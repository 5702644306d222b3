"""Breaker state shared by every process (and host) guarding a vendor, through Redis.

::

    storage = vg.RedisStorage("redis://10.0.0.5:6379/0", namespace="shop")
    stripe = vg.Vendor("stripe", breaker=vg.Breaker(failures=5, storage=storage))

All processes using the same namespace and vendor see one circuit: consecutive failures are
counted together, one process opening the circuit makes the others reject, half-open admits
``half_open_calls`` trial calls across all of them, and control actions (force_open, disable,
reset) reach every process.

The call path stays local: a closed circuit admits a call by reading one attribute, as without
sharing. A background thread reads the shared state of every circuit in one round trip every
``refresh`` seconds (0.2 by default), so an opening elsewhere is seen within that time. Redis is
asked directly only when something happens: a failure, the first success after failures, a
half-open trial, a control action. Each Redis call is bounded by ``timeout`` (50 ms by default).

When Redis is down or slow, circuits fall back to their local state: the trouble is logged once,
counted in ``vendorguard_shared_state_errors_total``, and calls go on; the background thread
keeps trying, and when Redis answers again each circuit re-syncs (a circuit that opened locally
meanwhile publishes its state; otherwise it adopts the shared one).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .policy import _seconds

if TYPE_CHECKING:
    from .breaker import Circuit

__all__ = ["RedisStorage", "Shared"]

_log = logging.getLogger("vendorguard")
_TTL_MS = 7 * 24 * 3600 * 1000  # a circuit nobody touches for a week is forgotten

# Every script returns {state, milliseconds until a trial may run, failures, override, verdict}.
_PROLOGUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'until', 'trials', 'successes',
                     'override', 'version', 'since')
local state = h[1] or 'closed'
local failures = tonumber(h[2] or '0')
local untl = tonumber(h[3] or '0')
local trials = tonumber(h[4] or '0')
local successes = tonumber(h[5] or '0')
local override = h[6] or ''
local version = tonumber(h[7] or '0')
local since = tonumber(h[8] or '0')
local verdict = ''
local function bump()
  version = version + 1
  redis.call('HSET', KEYS[1], 'version', version)
end
local function open(wait)
  state = 'open'; untl = now + wait; failures = 0; trials = 0; successes = 0
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', untl, 'failures', 0, 'trials', 0,
             'successes', 0)
  bump()
end
"""
_EPILOGUE = """
redis.call('PEXPIRE', KEYS[1], TTL)
return {state, math.max(0, untl - now), failures, override, verdict, version}
""".replace("TTL", str(_TTL_MS))
_READ = _PROLOGUE + "\nreturn {state, math.max(0, untl - now), failures, override, '', version}\n"
# ARGV: failures threshold (0: none), open ms, Retry-After ms, trip by failure rate (0/1)
_FAILURE = _PROLOGUE + """
if override == '' then
  if state == 'half_open' or tonumber(ARGV[4]) == 1 then
    open(math.max(tonumber(ARGV[2]), tonumber(ARGV[3])))
  elseif state == 'closed' then
    failures = failures + 1
    if tonumber(ARGV[1]) > 0 and failures >= tonumber(ARGV[1]) then
      open(math.max(tonumber(ARGV[2]), tonumber(ARGV[3])))
    else
      redis.call('HSET', KEYS[1], 'failures', failures)
      bump()
    end
  end
end
""" + _EPILOGUE
# ARGV: successes that close a half-open circuit
_SUCCESS = _PROLOGUE + """
if state == 'half_open' then
  successes = successes + 1
  trials = math.max(0, trials - 1)
  if successes >= tonumber(ARGV[1]) then
    state = 'closed'; failures = 0
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'trials', 0, 'successes', 0)
  else
    redis.call('HSET', KEYS[1], 'successes', successes, 'trials', trials)
  end
  bump()
elseif state == 'closed' and failures > 0 then
  failures = 0
  redis.call('HSET', KEYS[1], 'failures', 0)
  bump()
end
""" + _EPILOGUE
# ARGV: trial calls admitted while half-open; ms after which trials not heard of are given back
# (their process may have died)
_TRIAL = _PROLOGUE + """
if override == '' then
  if state == 'open' and now >= untl then
    state = 'half_open'; trials = 0; successes = 0
    redis.call('HSET', KEYS[1], 'state', 'half_open', 'trials', 0, 'successes', 0)
    bump()
  end
  if state == 'half_open' and trials >= tonumber(ARGV[1]) and now - since >= tonumber(ARGV[2]) then
    trials = 0
  end
  if state == 'half_open' and trials < tonumber(ARGV[1]) then
    trials = trials + 1
    since = now
    redis.call('HSET', KEYS[1], 'trials', trials, 'since', now)
    bump()
    verdict = 'trial'
  elseif state == 'closed' then
    verdict = 'closed'
  end
end
""" + _EPILOGUE
_RELEASE = _PROLOGUE + """
if state == 'half_open' and trials > 0 then
  trials = trials - 1
  redis.call('HSET', KEYS[1], 'trials', trials)
  bump()
end
""" + _EPILOGUE
# ARGV: the override ('' releases it and closes the circuit)
_CONTROL = _PROLOGUE + """
override = ARGV[1]
if override == '' then
  state = 'closed'; failures = 0; trials = 0; successes = 0; untl = 0
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'trials', 0, 'successes', 0,
             'until', 0, 'override', '')
else
  redis.call('HSET', KEYS[1], 'override', override)
end
bump()
""" + _EPILOGUE
# ARGV: state, ms until a trial, override: a circuit that changed while Redis was away
_PUBLISH = _PROLOGUE + """
state = ARGV[1]; untl = now + tonumber(ARGV[2]); override = ARGV[3]
failures = 0; trials = 0; successes = 0
redis.call('HSET', KEYS[1], 'state', state, 'until', untl, 'failures', 0, 'trials', 0,
           'successes', 0, 'override', override)
bump()
""" + _EPILOGUE


class Snapshot(tuple[str, float, int, str, str, int]):
    """A circuit's shared state: state, seconds until a trial may run, consecutive failures,
    override (``""``, ``forced_open``, ``disabled``), the script's verdict, and the version
    (bumped by every change, so a read older than a change already seen is ignored)."""

    __slots__ = ()

    @classmethod
    def parse(cls, raw: Any) -> Snapshot:
        state, wait, failures, override, verdict, version = (
            v.decode() if isinstance(v, bytes) else v for v in raw)
        return cls((str(state), int(wait) / 1000.0, int(failures), str(override), str(verdict),
                    int(version)))


class RedisStorage:
    """Shared breaker state on Redis; pass it as ``Breaker(storage=...)``.

    Args:
        redis: a ``redis.Redis`` client or a ``redis://`` URL. A client is used with its
            connection settings but ``timeout`` as its socket timeouts.
        namespace: keys are ``{namespace}:{vendor}:{circuit}``; applications sharing a Redis
            but not their vendors' state use different namespaces.
        refresh: seconds between reads of the shared state (how stale a process's view may
            be); 0.05 to 5.
        timeout: the longest any Redis call may take, in seconds; 0.005 to 1.
    """

    def __init__(self, redis: Any, *, namespace: str = "vendorguard", refresh: float = 0.2,
                 timeout: float = 0.05) -> None:
        import redis as redis_module
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if not isinstance(namespace, str) or not namespace or ":" in namespace:
            raise ValueError(f"RedisStorage.namespace must be a non-empty string without ':', "
                             f"got {namespace!r}")
        refresh = _bounded("refresh", refresh, 0.05, 5)
        timeout = _bounded("timeout", timeout, 0.005, 1)
        # One try per call, bounded by the timeout: redis-py's own retries would multiply it.
        bounds = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                  "retry": Retry(NoBackoff(), 0), "retry_on_timeout": False}
        if isinstance(redis, str):
            client = redis_module.Redis.from_url(redis, **bounds)
        elif isinstance(redis, redis_module.Redis):
            pool = redis.connection_pool
            options = {**pool.connection_kwargs, **bounds}
            client = redis_module.Redis(connection_pool=type(pool)(
                connection_class=pool.connection_class, **options))
        else:
            raise TypeError(f"RedisStorage needs a redis.Redis client or a redis:// URL, "
                            f"got {type(redis).__name__}")
        self.client = client
        self.namespace = namespace
        self.refresh = float(refresh)
        self.timeout = float(timeout)
        self.errors = 0
        """Redis calls that failed (each also counted in the vendor's metrics)."""
        self.online = True
        """False from a failed Redis call until the next read succeeds."""
        self._errors_type = (redis_module.RedisError, OSError)
        self._scripts = {name: client.register_script(source) for name, source in (
            ("read", _READ), ("failure", _FAILURE), ("success", _SUCCESS), ("trial", _TRIAL),
            ("release", _RELEASE), ("control", _CONTROL), ("publish", _PUBLISH))}
        self._links: weakref.WeakSet[Shared] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _restart(me()))

    def __repr__(self) -> str:
        return f"RedisStorage(namespace={self.namespace!r}, refresh={self.refresh})"

    def link(self, circuit: Circuit) -> Shared:
        """Share ``circuit``'s state (called by the circuit when it is built)."""
        shared = Shared(self, circuit, f"{self.namespace}:{circuit.vendor}:{circuit.name}")
        with self._lock:
            self._links.add(shared)
            self._start()
        return shared

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"vendorguard-redis-{self.namespace}")
            self._thread.start()

    def close(self) -> None:
        """Stop the background reads (circuits keep their last state and go local)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.refresh + self.timeout + 1.0)

    def run(self, name: str, key: str, *args: Any) -> Snapshot | None:
        """Run one script for one circuit; None (and offline) when Redis fails."""
        try:
            raw = self._scripts[name](keys=[key], args=list(args))
        except self._errors_type as exc:
            self.failed(exc)
            return None
        return Snapshot.parse(raw)

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.online:
            self.online = False
            _log.warning("vendorguard: Redis for shared breaker state (namespace %s) failed "
                         "with %s; circuits use their local state until it answers",
                         self.namespace, type(exc).__name__)

    def sync(self) -> bool:
        """Read every linked circuit's shared state in one round trip and adopt it; True when
        Redis answered."""
        with self._lock:
            links = list(self._links)
        if not links:
            return True
        try:
            pipe = self.client.pipeline(transaction=False)
            for link in links:
                self._scripts["read"](keys=[link.key], args=[], client=pipe)
            answers = pipe.execute()
        except self._errors_type as exc:
            self.failed(exc)
            counted: dict[str, Callable[[], None]] = {}
            for link in links:  # once per vendor
                counted.setdefault(link.circuit.vendor, link.circuit.count_shared_error)
            for count in counted.values():
                count()
            return False
        back = not self.online
        self.online = True
        if back:
            _log.warning("vendorguard: Redis for shared breaker state (namespace %s) answers "
                         "again; circuits re-sync", self.namespace)
        for link, raw in zip(links, answers, strict=True):
            snapshot = Snapshot.parse(raw)
            if back and link.circuit.diverged(snapshot):
                published = link.circuit.publish()
                if published is not None:
                    snapshot = published
            link.circuit.adopt(snapshot)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.refresh):
            try:
                self.sync()
            except Exception:  # never let the reader die: circuits would silently go local
                _log.exception("vendorguard: reading shared breaker state failed")
            with self._lock:
                if not self._links:
                    self._thread = None
                    return


def _bounded(field: str, value: Any, low: float, high: float) -> float:
    seconds = _seconds("RedisStorage", field, value, allow_none=False)
    assert seconds is not None
    if not low <= seconds <= high:
        raise ValueError(f"RedisStorage.{field} must be {low} to {high} seconds, got {value!r}")
    return seconds


def _restart(storage: RedisStorage | None) -> None:
    """In a child process just forked (e.g. a pre-loading server's worker): the reading thread
    did not survive the fork; start it again."""
    if storage is not None and not storage._stop.is_set():
        storage._lock = threading.Lock()
        storage._thread = None
        if storage._links:
            storage._start()


class Shared:
    """One circuit's link to its shared state."""

    __slots__ = ("__weakref__", "circuit", "key", "storage")

    def __init__(self, storage: RedisStorage, circuit: Circuit, key: str) -> None:
        self.storage, self.circuit, self.key = storage, circuit, key

    def run(self, name: str, *args: Any) -> Snapshot | None:
        """Run a script when Redis is online; None when offline or when it fails."""
        storage = self.storage
        if not storage.online:
            return None
        snap = storage.run(name, self.key, *args)
        if snap is None:
            self.circuit.count_shared_error()
        return snap
