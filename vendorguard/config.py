"""Policies from configuration: a mapping, a TOML file, environment variables; live reload.

A configuration overrides the policies written in code, field by field::

    [vendors.sendgrid]
    critical = true
    timeout.attempt = 2.0
    breaker.failures = 5

    [vendors.sendgrid.operations."mail.send"]
    retry.attempts = 2

    [control]
    token_file = "/run/secrets/vendorguard-control"

    [audit]
    file = "/var/log/vendorguard/audit.jsonl"

Precedence, lowest first: the policies in code < the file (or mapping) < environment variables
(``VENDORGUARD_SENDGRID__TIMEOUT__ATTEMPT=2.0``: ``__`` separates the parts of the key path,
the first part is the vendor, or ``CONTROL`` / ``AUDIT``). Within one vendor the most specific
setting wins: an operation's settings (``operations."mail.send"``) override the guard's own
policies in code, which override the vendor's settings. Nullable fields (``timeout.attempt``,
``timeout.total``, ``breaker.failures``, ``breaker.failure_rate``, ``breaker.slow_call``) take
``"none"``; ``retry.enabled``, ``retry.budget.enabled``, ``breaker.enabled`` and
``bulkhead.enabled`` switch a layer off (or on, with default values).

Everything is checked before anything changes: an unknown key, a wrong type or an invalid
value raises :class:`ConfigError` naming the full key path and where it came from, and the
configuration in effect stays as it was. :func:`reload` reads the same source again and
rebuilds the guards whose policies changed between calls (calls in flight finish under the
policies they started with); breaker state survives unless the breaker policy changed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from . import audit
from .events import ConfigApplied, ConfigRefused, emit
from .fallback import MISSING
from .policy import Backoff, Breaker, Bulkhead, Retry, RetryBudget, Timeout
from .telemetry.metrics import set_config_generation

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ConfigError", "Settings", "clear", "configure", "control_token", "current",
           "generation", "reload",
           "reload_on_sighup", "watch"]

ENV_PREFIX = "VENDORGUARD_"
ENV_FILE = "VENDORGUARD_CONFIG"
"""The environment variable naming the configuration file :func:`configure` reads by default."""
MIN_TOKEN = 16
_log = logging.getLogger("vendorguard")
_NAME = re.compile(r"[a-z0-9_.-]+")
Key = tuple[str, ...]


class ConfigError(ValueError):
    """A configuration was refused. ``key`` is the offending key path (``vendors.sendgrid.
    timeout.attempt``), ``origin`` where it came from (a file, ``environment variable ...``,
    ``mapping``)."""

    def __init__(self, key: str, origin: str, problem: str) -> None:
        super().__init__(f"{origin}: {key}: {problem}")
        self.key, self.origin, self.problem = key, origin, problem


# -- the schema ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Field:
    kind: str  # seconds, int, number, bool, scope, path
    nullable: bool = False


_EXPECTED = {"seconds": "seconds (a number)", "int": "an integer", "number": "a number",
             "bool": "true or false", "scope": '"vendor" or "operation"', "path": "a file path"}
SECONDS, INT, NUMBER, BOOL = _Field("seconds"), _Field("int"), _Field("number"), _Field("bool")
_TIMEOUT = {"attempt": _Field("seconds", True), "total": _Field("seconds", True)}
_RETRY: dict[str, Any] = {
    "enabled": BOOL, "attempts": INT, "max_retry_after": SECONDS,
    "backoff": {"initial": SECONDS, "maximum": SECONDS, "multiplier": NUMBER, "jitter": BOOL},
    "budget": {"enabled": BOOL, "ratio": NUMBER, "floor": NUMBER},
}
_OPERATION = {"timeout": _TIMEOUT, "retry": _RETRY}
_VENDOR: dict[str, Any] = {
    "critical": BOOL,
    **_OPERATION,
    "breaker": {"enabled": BOOL, "failures": _Field("int", True),
                "failure_rate": _Field("number", True), "window": INT, "min_calls": INT,
                "slow_call": _Field("seconds", True), "reset_after": SECONDS,
                "half_open_calls": INT, "scope": _Field("scope")},
    "bulkhead": {"enabled": BOOL, "max_concurrent": INT, "max_wait": SECONDS},
}
_TOP: dict[str, Any] = {"control": {"token_file": _Field("path")},
                        "audit": {"file": _Field("path")}}


def _dotted(key: Key) -> str:
    return ".".join(f'"{part}"' if "." in part or not part else part for part in key)


@dataclass(frozen=True, slots=True)
class _Setting:
    value: Any
    origin: str


Flat = dict[Key, _Setting]


def _convert(spec: _Field, value: Any, key: Key, origin: str, from_env: bool) -> Any:
    def bad(expected: str) -> ConfigError:
        shown = repr(value if not isinstance(value, str) else value[:40])
        return ConfigError(_dotted(key), origin, f"must be {expected}, got {shown}")

    if spec.nullable and isinstance(value, str) and value.strip().lower() == "none":
        return None
    if from_env and isinstance(value, str) and spec.kind not in ("scope", "path"):
        text = value.strip().lower()
        try:
            if spec.kind == "bool":
                value = {"true": True, "1": True, "yes": True, "on": True, "false": False,
                         "0": False, "no": False, "off": False}[text]
            elif spec.kind == "int":
                value = int(text)
            else:
                value = float(text)
        except (KeyError, ValueError):
            raise bad(_EXPECTED[spec.kind]) from None
    expected = _EXPECTED[spec.kind] + (' or "none"' if spec.nullable else "")
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad(expected)
    elif spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(expected)
    elif spec.kind in ("seconds", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(expected)
        value = float(value)
    elif spec.kind == "scope":
        if value not in ("vendor", "operation"):
            raise bad(expected)
    elif not isinstance(value, str) or not value:
        raise bad(expected)
    return value


def _flatten(node: Any, schema: dict[str, Any], key: Key, origin: str, out: Flat) -> None:
    """Check ``node`` against ``schema`` and add its settings to ``out``."""
    if not isinstance(node, Mapping):
        raise ConfigError(_dotted(key), origin, f"must be a table, got {type(node).__name__}")
    for name, child in node.items():
        if not isinstance(name, str):
            raise ConfigError(_dotted(key), origin, "keys must be strings")
        where = (*key, name)
        if key == ("vendors",):
            if not _NAME.fullmatch(name):
                raise ConfigError(_dotted(where), origin,
                                  "vendor names must match [a-z0-9_.-]+")
            _flatten(child, _VENDOR, where, origin, out)
        elif len(key) == 2 and key[0] == "vendors" and name == "operations":
            if not isinstance(child, Mapping):
                raise ConfigError(_dotted(where), origin, "must be a table of operations")
            for operation, settings in child.items():
                _flatten(settings, _OPERATION, (*where, str(operation)), origin, out)
        elif name == "vendors" and not key:
            _flatten(child, {}, where, origin, out)
        elif name not in schema:
            raise ConfigError(_dotted(where), origin, "unknown key")
        elif isinstance(schema[name], dict):
            _flatten(child, schema[name], where, origin, out)
        else:
            out[where] = _Setting(_convert(schema[name], child, where, origin, False), origin)


def _from_env(environ: Mapping[str, str]) -> Flat:
    out: Flat = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        origin = f"environment variable {name}"
        parts = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
        key = parts if parts[0] in _TOP else ("vendors", *parts)
        spec = _lookup(key)
        if spec is None:
            raise ConfigError(_dotted(key), origin, "unknown key")
        out[key] = _Setting(_convert(spec, environ[name], key, origin, True), origin)
    return out


def _lookup(key: Key) -> _Field | None:
    if key and key[0] == "vendors":
        if len(key) < 3 or not _NAME.fullmatch(key[1]):
            return None
        schema: Any = _VENDOR
        rest = key[2:]
        if rest[0] == "operations":
            if len(rest) < 3:
                return None
            schema, rest = _OPERATION, rest[2:]
    else:
        schema, rest = _TOP, key
    for part in rest:
        if not isinstance(schema, dict) or part not in schema:
            return None
        schema = schema[part]
    return schema if isinstance(schema, _Field) else None


# -- settings and the policies they make ---------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """A checked configuration: every setting with its origin, and its generation once it took
    effect."""

    values: Flat = field(default_factory=dict)
    source: str = "code"
    generation: int = 0

    def vendor(self, name: str) -> Flat:
        """The settings of one vendor, keyed below ``vendors.<name>``."""
        return {k[2:]: s for k, s in self.values.items() if k[:2] == ("vendors", name)}

    def vendor_names(self) -> set[str]:
        return {k[1] for k in self.values if k[0] == "vendors"}

    def get(self, *key: str) -> Any:
        setting = self.values.get(key)
        return None if setting is None else setting.value


@dataclass(frozen=True, slots=True)
class VendorPolicy:
    """What a vendor's guards are built from: its policies and its settings per operation."""

    timeout: Timeout
    retry: Retry | None
    breaker: Breaker | None
    bulkhead: Bulkhead | None
    critical: bool
    operations: dict[str, Flat] = field(default_factory=dict)

    def for_operation(self, vendor: str, operation: str, timeout: Timeout | None,
                      retry: Retry | Any | None) -> tuple[Timeout, Retry | None]:
        """The policies of one guard: its own from code (``None`` / ``MISSING``: the
        vendor's), overridden by the operation's settings."""
        timeout = self.timeout if timeout is None else timeout
        retry = self.retry if retry is MISSING else retry
        settings = self.operations.get(operation)
        if settings:
            full = ("vendors", vendor, "operations", operation)
            timeout = _build(Timeout, timeout, _section(settings, "timeout"), (*full, "timeout"))
            retry = _retry(retry, settings, full)
        return timeout, retry


def _section(flat: Flat, *prefix: str) -> dict[Key, _Setting]:
    n = len(prefix)
    return {k[n:]: s for k, s in flat.items() if k[:n] == prefix}


def _build(kind: type, base: Any, settings: dict[Key, _Setting], full: Key = ()) -> Any:
    """``base`` (or a default ``kind``) with the settings' fields replaced, or None when the
    section is switched off; a refused value names its key."""
    enabled = settings.get(("enabled",))
    if enabled is not None and not enabled.value:
        if len(settings) > 1:
            other = next(k for k in settings if k != ("enabled",))
            raise ConfigError(_dotted((*full, *other)), settings[other].origin,
                              "set while enabled = false")
        return None
    fields = {k[0]: s.value for k, s in settings.items() if len(k) == 1 and k != ("enabled",)}
    if not fields and enabled is None:
        return base
    start = base if base is not None else kind()
    try:
        return dataclasses.replace(start, **fields)
    except (TypeError, ValueError) as exc:
        name = _culprit(start, fields, str(exc))
        raise ConfigError(_dotted((*full, name)), settings[name,].origin, str(exc)) from None


def _culprit(base: Any, fields: dict[str, Any], message: str) -> str:
    """The field to blame for a refused policy: the one the message names, if it was set;
    else the first that is refused on its own (it clashes with a value from code); else the
    last one set."""
    match = re.search(r"\b[A-Z]\w*\.(\w+)", message)
    if match and match.group(1) in fields:
        return match.group(1)
    for name, value in fields.items():
        try:
            dataclasses.replace(base, **{name: value})
        except (TypeError, ValueError):
            return name
    return list(fields)[-1]


def _retry(base: Retry | None, flat: Flat, full: Key = ()) -> Retry | None:
    settings = _section(flat, "retry")
    if not settings:
        return base
    nested = {k: s for k, s in settings.items() if k[0] in ("backoff", "budget")}
    top = {k: s for k, s in settings.items() if k not in nested}
    retry: Retry | None = _build(Retry, base, top, (*full, "retry"))
    if not nested:
        return retry
    if retry is None:
        if top:  # switched off explicitly, yet backoff or budget set
            other = next(iter(nested))
            raise ConfigError(_dotted((*full, "retry", *other)), nested[other].origin,
                              "set while retry.enabled = false")
        retry = Retry()  # like retry.attempts alone, backoff or budget settings switch it on
    backoff = _build(Backoff, retry.backoff, _section(settings, "backoff"),
                     (*full, "retry", "backoff"))
    budget = _build(RetryBudget, retry.budget, _section(settings, "budget"),
                    (*full, "retry", "budget"))
    return dataclasses.replace(retry, backoff=backoff, budget=budget)


def vendor_policy(name: str, code: VendorPolicy, settings: Settings) -> VendorPolicy:
    """A vendor's policies: those from code with its settings applied (checks them all)."""
    flat = settings.vendor(name)
    full = ("vendors", name)
    if not flat:
        return code
    critical = flat.get(("critical",))
    operations: dict[str, Flat] = {}
    for key in flat:
        if key[0] == "operations":
            operations.setdefault(key[1], {})[key[2:]] = flat[key]
    policy = VendorPolicy(
        timeout=_build(Timeout, code.timeout, _section(flat, "timeout"), (*full, "timeout")),
        retry=_retry(code.retry, flat, full),
        breaker=_build(Breaker, code.breaker, _section(flat, "breaker"), (*full, "breaker")),
        bulkhead=_build(Bulkhead, code.bulkhead, _section(flat, "bulkhead"),
                        (*full, "bulkhead")),
        critical=code.critical if critical is None else critical.value,
        operations=operations)
    for operation, op_flat in operations.items():  # checked against the vendor's policies
        op_full = (*full, "operations", operation)
        _build(Timeout, policy.timeout, _section(op_flat, "timeout"), (*op_full, "timeout"))
        _retry(policy.retry, op_flat, op_full)
    return policy


# -- loading -------------------------------------------------------------------------------------

@dataclass
class _State:
    settings: Settings = field(default_factory=Settings)
    source: Any = None
    environ: Mapping[str, str] | None = None
    use_env: bool = True
    token: str | None = None


_state = _State()
LOCK = threading.RLock()
"""Held while a configuration is applied, and while a new vendor adopts its policies."""


def _read(source: Any) -> tuple[Flat, str]:
    if source is None:
        return {}, "code"
    if isinstance(source, Mapping):
        flat: Flat = {}
        _flatten(source, _TOP, (), "mapping", flat)
        return flat, "mapping"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"configure() takes a mapping or a file path, got {source!r}")
    path = os.fspath(source)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("(file)", path, f"cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", path, f"is not valid TOML: {exc}") from None
    flat = {}
    _flatten(data, _TOP, (), path, flat)
    return flat, path


def _read_token(settings: Settings) -> str | None:
    path = settings.get("control", "token_file")
    if path is None:
        return None
    origin = settings.values["control", "token_file"].origin
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("control.token_file", origin,
                          f"cannot be read ({type(exc).__name__})") from None
    if len(token) < MIN_TOKEN:
        raise ConfigError("control.token_file", origin,
                          f"the token must be at least {MIN_TOKEN} characters")
    return token


def _load(source: Any, environ: Mapping[str, str] | None, use_env: bool,
          ) -> tuple[Settings, str | None]:
    flat, name = _read(source)
    if use_env:
        flat = {**flat, **_from_env(os.environ if environ is None else environ)}
    settings = Settings(flat, name)
    return settings, _read_token(settings)


def configure(source: Mapping[str, Any] | str | os.PathLike[str] | None = None, *,
              env: bool | Mapping[str, str] = True) -> Settings:
    """Load a configuration and apply it to every vendor, registered now or later.

    Args:
        source: a mapping (``{"vendors": {"sendgrid": {"timeout": {"attempt": 2.0}}}}``), the
            path of a TOML file, or ``None`` for the file named by ``VENDORGUARD_CONFIG``
            (none if unset).
        env: read ``VENDORGUARD_<VENDOR>__<KEY>`` environment variables over the source
            (``False``: do not; a mapping: read those instead of ``os.environ``).

    Raises:
        ConfigError: a setting is refused (nothing was applied).
    """
    environ = env if isinstance(env, Mapping) else None
    if source is None:
        source = (os.environ if environ is None else environ).get(ENV_FILE) or None
    with LOCK:
        try:
            settings, token = _load(source, environ, bool(env))
            _apply(settings, token, "configure")
        except ConfigError as exc:
            _refused(exc, "configure")
            raise
        _state.source, _state.environ, _state.use_env = source, environ, bool(env)
        return _state.settings


def reload(actor: str | None = None) -> Settings:
    """Read the last configured source (and environment) again and apply it.

    A refused configuration changes nothing: the error is logged, audited, emitted as a
    :class:`~vendorguard.events.ConfigRefused` event and raised.
    """
    with LOCK:
        try:
            settings, token = _load(_state.source, _state.environ, _state.use_env)
            _apply(settings, token, "reload", actor)
        except ConfigError as exc:
            _refused(exc, actor)
            raise
        return _state.settings


def _refused(exc: ConfigError, actor: str | None) -> None:
    gen = _state.settings.generation
    _log.error("vendorguard: configuration refused, generation %d stays in effect: %s",
               gen, exc)
    audit.record("config", "refused", actor=actor, reason=exc.key, before=gen, after=gen,
                 log=False)
    emit(ConfigRefused(exc.key, exc.problem, gen, time.time()))


def _apply(settings: Settings, token: str | None, how: str, actor: str | None = None,
           ) -> None:
    from .registry import vendors

    plans = []
    for v in vendors():  # everything is built and checked before anything changes
        if not hasattr(v, "policy_in_effect"):
            continue  # still being built: it adopts the new settings once they are in effect
        policy = vendor_policy(v.name, v.code_policy, settings)
        plans.append((v, policy, v.plan(policy)))
    for name in settings.vendor_names() - {v.name for v, _, _ in plans}:
        vendor_policy(name, _DEFAULT, settings)
    gen = _state.settings.generation + 1
    settings = dataclasses.replace(settings, generation=gen)
    changed = []
    for v, policy, plan in plans:
        if v.apply(policy, plan):
            changed.append(v.name)
    _state.settings, _state.token = settings, token
    audit.set_file(settings.get("audit", "file"))
    set_config_generation(gen)
    audit.record("config", "applied", actor=actor or how, reason=settings.source,
                 before=gen - 1, after={"generation": gen, "vendors": changed}, log=False)
    _log.info("vendorguard: configuration generation %d from %s applied (%s)", gen,
              settings.source, ", ".join(changed) or "no policy changed")
    emit(ConfigApplied(gen, tuple(changed), time.time()))


_DEFAULT = VendorPolicy(timeout=Timeout(), retry=Retry(), breaker=Breaker(), bulkhead=None,
                        critical=False)


def policy_for(name: str, code: VendorPolicy) -> VendorPolicy:
    """A new vendor's policies under the configuration in effect (hold :data:`LOCK` until
    they are adopted)."""
    return vendor_policy(name, code, _state.settings)


def clear() -> None:
    """Forget the configuration (for tests): new vendors get their policies from code only,
    and the generation is 0 again. Vendors already built keep theirs."""
    global _state
    with LOCK:
        _state = _State()
        set_config_generation(0)
        audit.set_file(None)


def generation() -> int:
    """How many configurations have taken effect in this process (0: none)."""
    return _state.settings.generation


def current() -> Settings:
    """The configuration in effect."""
    return _state.settings


def control_token() -> str | None:
    """The control endpoint's token read from ``control.token_file``, or None (disabled)."""
    return _state.token


# -- reloading on a signal or a file change ----------------------------------------------------

def _reload_quietly(actor: str) -> None:
    try:
        reload(actor)
    except Exception as exc:  # already logged and audited when refused
        if not isinstance(exc, ConfigError):
            _log.error("vendorguard: reload failed with %s", type(exc).__name__)


def reload_on_sighup() -> None:
    """Reload on SIGHUP (call from the main thread; replaces any SIGHUP handler)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=_reload_quietly, args=("SIGHUP",), daemon=True).start()

    signal.signal(signal.SIGHUP, handler)


def watch(interval: float = 2.0) -> Callable[[], None]:
    """Reload whenever the configured file changes (checked every ``interval`` seconds from a
    daemon thread); returns a function that stops watching."""
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
    stop = threading.Event()

    def stamp() -> tuple[float, int] | None:
        source = _state.source
        if not isinstance(source, (str, os.PathLike)):
            return None
        try:
            st = os.stat(source)
        except OSError:
            return None
        return st.st_mtime, st.st_size

    seen = stamp()

    def run() -> None:
        nonlocal seen
        while not stop.wait(interval):
            now = stamp()
            if now != seen and now is not None:
                seen = now
                _reload_quietly("file watch")

    threading.Thread(target=run, name="vendorguard-config-watch", daemon=True).start()
    return stop.set
