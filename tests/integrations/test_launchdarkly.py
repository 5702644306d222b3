"""The LaunchDarkly drop-in with the real SDK: TestData for evaluation, a loopback fake for the
data source (stream, outage, recovery, errors) and the analytics events."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

ldclient = pytest.importorskip("ldclient")

from ldclient import Config, Context  # noqa: E402
from ldclient.config import HTTPConfig  # noqa: E402
from ldclient.evaluation import EvaluationDetail, FeatureFlagsState  # noqa: E402
from ldclient.feature_store import InMemoryFeatureStore  # noqa: E402
from ldclient.hook import Hook, Metadata  # noqa: E402
from ldclient.integrations.test_data import TestData  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from vendorguard.integrations import launchdarkly as vg_ld  # noqa: E402
from vendorguard.integrations.launchdarkly import LDClient, wrap  # noqa: E402

import vendorguard as vg  # noqa: E402
from tests.conftest import sample, wait_until  # noqa: E402
from tests.integrations.fakehttp import refused_url  # noqa: E402
from tests.integrations.ld_fake import FakeLD, flag  # noqa: E402

CTX = Context.builder("user-1").kind("user").name("Ada").build()
VIP = Context.create("vip")
NOT_READY_WARNING = "Feature Flag evaluation attempted before client"


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------
@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    """Registers clients to close at teardown; returns what it is given."""
    opened: list[Any] = []
    yield lambda client: opened.append(client) or client
    for client in reversed(opened):
        client.close()


@pytest.fixture
def td() -> TestData:
    data = TestData.data_source()
    data.update(data.flag("f").variation_for_all(True))
    data.update(data.flag("color").variations("blue", "green").variation_for_all(0))
    data.update(data.flag("limit").variations(10, 20).variation_for_all(1))
    data.update(data.flag("vip-only").variation_for_key("user", "vip", True)
                .fallthrough_variation(False))
    data.update(data.flag("broken").variations(True, False).variation_for_all(7))
    return data


def td_config(td: TestData, **kw: Any) -> Config:
    return Config("sdk-test", update_processor_class=td, send_events=False,
                  diagnostic_opt_out=True, **kw)


@pytest.fixture
def client(td: TestData, metrics: CollectorRegistry, closing: Callable[[Any], Any]) -> Any:
    """The drop-in on TestData (flags in memory at once, no network)."""
    return closing(LDClient(td_config(td), registry=metrics))


@pytest.fixture
def raw(td: TestData, closing: Callable[[Any], Any]) -> Any:
    """A plain SDK client on the same TestData."""
    return closing(ldclient.LDClient(td_config(td), start_wait=1))


@pytest.fixture
def fake() -> Iterator[FakeLD]:
    with FakeLD({"f": flag("f", True), "color": flag("color", "blue",
                                                      variations=["blue", "green"])}) as f:
        yield f


def stream_config(url: str, **kw: Any) -> Config:
    kw.setdefault("send_events", False)
    kw.setdefault("stream", True)
    return Config("sdk-test", stream_uri=url, base_uri=url, events_uri=url,
                  initial_reconnect_delay=0.1, diagnostic_opt_out=True,
                  http=HTTPConfig(connect_timeout=1, read_timeout=2), **kw)


def calls(reg: CollectorRegistry, operation: str, outcome: str) -> float:
    return sample(reg, "vendorguard_calls_total", vendor="launchdarkly", operation=operation,
                  outcome=outcome)


def fallbacks(reg: CollectorRegistry, operation: str, reason: str) -> float:
    return sample(reg, "vendorguard_fallbacks_total", vendor="launchdarkly",
                  operation=operation, reason=reason)


def ld_health() -> dict[str, Any]:
    return vg.health()["vendors"]["launchdarkly"]  # type: ignore[no-any-return]




class Recorder(Hook):
    """A user hook that records what each evaluation series reports."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Any]] = []

    @property
    def metadata(self) -> Metadata:
        return Metadata(name="recorder")

    def before_evaluation(self, series_context: Any, data: dict[str, Any]) -> dict[str, Any]:
        return data

    def after_evaluation(self, series_context: Any, data: dict[str, Any],
                         detail: EvaluationDetail) -> dict[str, Any]:
        self.seen.append((series_context.key, series_context.method, detail.value))
        return data


class BrokenStore(InMemoryFeatureStore):  # type: ignore[misc]
    """A feature store whose reads fail (think Redis down)."""

    def get(self, kind: Any, key: str, callback: Any = lambda x: x) -> Any:
        raise OSError("store down")


# --------------------------------------------------------------------------------------------
# evaluation on TestData
# --------------------------------------------------------------------------------------------
def test_flag_values_are_served(client: Any) -> None:
    """Flags of every type come back as the SDK evaluates them."""
    assert client.variation("f", CTX, False) is True
    assert client.variation("color", CTX, "red") == "blue"
    assert client.variation("limit", CTX, 0) == 20


def test_targeting_per_context(client: Any) -> None:
    """Individual targeting still picks the value per context."""
    assert client.variation("vip-only", VIP, None) is True
    assert client.variation("vip-only", CTX, None) is False


def test_success_is_counted(client: Any, metrics: CollectorRegistry) -> None:
    """Each served flag is one success of operation variation, with no fallback."""
    for _ in range(3):
        client.variation("f", CTX, False)
    assert calls(metrics, "variation", "success") == 3
    assert sum(fallbacks(metrics, "variation", r) for r in vg_ld.REASONS) == 0


def test_live_update_is_served(client: Any, td: TestData) -> None:
    """A flag changed in the data source is served at the next evaluation."""
    td.update(td.flag("f").variation_for_all(False))
    assert client.variation("f", CTX, True) is False


def test_missing_flag_serves_default(client: Any, metrics: CollectorRegistry) -> None:
    """An unknown flag gives the default: a caller error, reason flag_not_found."""
    assert client.variation("nope", CTX, "dflt") == "dflt"
    assert calls(metrics, "variation", "caller_error") == 1
    assert fallbacks(metrics, "variation", "flag_not_found") == 1


@pytest.mark.parametrize("bad", [{"key": "user-1"}, None, "user-1"],
                         ids=["dict", "none", "str"])
def test_bad_context_serves_default(client: Any, metrics: CollectorRegistry, bad: Any) -> None:
    """A context that is not a Context gives the default instead of raising."""
    assert client.variation("f", bad, "dflt") == "dflt"
    assert calls(metrics, "variation", "caller_error") == 1
    assert fallbacks(metrics, "variation", "bad_context") == 1


def test_raw_sdk_raises_on_bad_context(raw: Any) -> None:
    """Control: the plain SDK raises for a dict context (what the drop-in protects from)."""
    with pytest.raises(AttributeError):
        raw.variation("f", {"key": "user-1"}, "dflt")


def test_invalid_context_object_serves_default(client: Any, metrics: CollectorRegistry) -> None:
    """A Context with an empty key is a bad context too (SDK reason USER_NOT_SPECIFIED)."""
    assert client.variation("f", Context.create(""), "dflt") == "dflt"
    assert fallbacks(metrics, "variation", "bad_context") == 1


def test_wrong_type_serves_default(client: Any, metrics: CollectorRegistry) -> None:
    """A string flag asked for with a bool default gives the default, reason wrong_type."""
    assert client.variation("color", CTX, False) is False
    assert calls(metrics, "variation", "caller_error") == 1
    assert fallbacks(metrics, "variation", "wrong_type") == 1


def test_int_default_accepts_number(client: Any, metrics: CollectorRegistry) -> None:
    """A float default accepts an int flag value (numbers are one JSON type)."""
    assert client.variation("limit", CTX, 0.5) == 20
    assert calls(metrics, "variation", "success") == 1


def test_malformed_flag_serves_default(client: Any, metrics: CollectorRegistry) -> None:
    """A fallthrough variation out of range gives the default, an error, malformed_flag."""
    assert client.variation("broken", CTX, "dflt") == "dflt"
    assert calls(metrics, "variation", "error") == 1
    assert fallbacks(metrics, "variation", "malformed_flag") == 1


def test_store_exception_serves_default(td: TestData, metrics: CollectorRegistry,
                                        closing: Callable[[Any], Any]) -> None:
    """A feature store that raises gives the default, an error, reason exception."""
    client = closing(LDClient(td_config(td, feature_store=BrokenStore()), registry=metrics))
    assert client.variation("f", CTX, False) is False
    assert calls(metrics, "variation", "error") == 1
    assert fallbacks(metrics, "variation", "exception") == 1


def test_exception_raised_in_sdk_serves_default(client: Any, metrics: CollectorRegistry,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception escaping the SDK (its event queue raises) gives the default, exception."""
    def boom(event: Any) -> None:
        raise RuntimeError("event queue broken")

    monkeypatch.setattr(client._event_processor, "send_event", boom)
    assert client.variation("f", CTX, False) is False
    assert calls(metrics, "variation", "error") == 1
    assert fallbacks(metrics, "variation", "exception") == 1


def test_variation_detail_returns_detail(client: Any, metrics: CollectorRegistry) -> None:
    """variation_detail returns the SDK's detail, counted under its own operation."""
    detail = client.variation_detail("f", CTX, False)
    assert isinstance(detail, EvaluationDetail)
    assert (detail.value, detail.variation_index) == (True, 0)
    assert detail.reason == {"kind": "FALLTHROUGH"}
    assert calls(metrics, "variation_detail", "success") == 1
    assert calls(metrics, "variation", "success") == 0


def test_variation_detail_failure_counted(client: Any, metrics: CollectorRegistry) -> None:
    """A failed variation_detail serves the default with an error reason, under its operation."""
    detail = client.variation_detail("f", None, "dflt")
    assert detail.value == "dflt"
    assert detail.variation_index is None
    assert detail.reason["kind"] == "ERROR"
    assert fallbacks(metrics, "variation_detail", "bad_context") == 1
    assert fallbacks(metrics, "variation", "bad_context") == 0


def test_all_flags_state_valid(client: Any, metrics: CollectorRegistry) -> None:
    """all_flags_state returns every flag's value, counted as a success."""
    state = client.all_flags_state(CTX)
    assert state.valid
    assert state.to_values_map()["color"] == "blue"
    assert calls(metrics, "all_flags_state", "success") == 1


def test_all_flags_state_bad_context(client: Any, metrics: CollectorRegistry) -> None:
    """A bad context gives an invalid FeatureFlagsState instead of raising, counted."""
    state = client.all_flags_state({"key": "user-1"})
    assert isinstance(state, FeatureFlagsState)
    assert not state.valid
    assert calls(metrics, "all_flags_state", "caller_error") == 1
    assert fallbacks(metrics, "all_flags_state", "bad_context") == 1


def test_all_flags_state_invalid_context_object(client: Any, metrics: CollectorRegistry) -> None:
    """A Context with an empty key is a bad context for all_flags_state too, not not_ready."""
    assert not client.all_flags_state(Context.create("")).valid
    assert calls(metrics, "all_flags_state", "caller_error") == 1
    assert fallbacks(metrics, "all_flags_state", "bad_context") == 1
    assert fallbacks(metrics, "all_flags_state", "not_ready") == 0


class UnlistableStore(InMemoryFeatureStore):  # type: ignore[misc]
    """A feature store that cannot list its flags."""

    def all(self, kind: Any, callback: Any = lambda x: x) -> Any:
        raise OSError("store down")


def test_all_flags_state_store_failure(td: TestData, metrics: CollectorRegistry,
                                       closing: Callable[[Any], Any]) -> None:
    """A store failure on an initialised client is an error, reason exception, not not_ready."""
    client = closing(LDClient(td_config(td, feature_store=UnlistableStore()), registry=metrics))
    assert client.is_initialized()
    assert not client.all_flags_state(CTX).valid
    assert calls(metrics, "all_flags_state", "error") == 1
    assert fallbacks(metrics, "all_flags_state", "not_ready") == 0
    assert fallbacks(metrics, "all_flags_state", "exception") == 1


def test_track_identify_flush_counted(client: Any, metrics: CollectorRegistry) -> None:
    """track, identify and flush are each counted as a success."""
    client.track("purchase", CTX, data={"sku": "x"}, metric_value=9.5)
    client.identify(CTX)
    client.flush()
    for op in ("track", "identify", "flush"):
        assert calls(metrics, op, "success") == 1, op


def test_events_with_bad_arguments_never_raise(client: Any, metrics: CollectorRegistry) -> None:
    """track and identify with a context that is not a Context return, counted as caller errors."""
    assert client.track("purchase", {"key": "u"}) is None
    assert client.identify(None) is None
    assert calls(metrics, "track", "caller_error") == 1
    assert calls(metrics, "identify", "caller_error") == 1


def test_flush_failure_never_raises(client: Any, metrics: CollectorRegistry,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush that raises inside the SDK returns, counted as an error."""
    def boom() -> None:
        raise RuntimeError("flush broken")

    monkeypatch.setattr(client._event_processor, "flush", boom)
    assert client.flush() is None
    assert calls(metrics, "flush", "error") == 1


def test_last_good_serves_last_value(td: TestData, metrics: CollectorRegistry,
                                     closing: Callable[[Any], Any]) -> None:
    """With last_good, a failure serves the value last seen for that flag and context."""
    client = closing(LDClient(td_config(td), registry=metrics, last_good=True))
    assert client.variation("f", CTX, False) is True
    td.update(td.flag("f").variations("on", "off").variation_for_all(0))  # now a wrong type
    assert client.variation("f", CTX, False) is True
    assert fallbacks(metrics, "variation", "wrong_type_last_good") == 1
    assert fallbacks(metrics, "variation", "wrong_type") == 0


def test_last_good_other_context_gets_default(td: TestData, metrics: CollectorRegistry,
                                              closing: Callable[[Any], Any]) -> None:
    """With last_good, a context never evaluated before still gets the default."""
    client = closing(LDClient(td_config(td), registry=metrics, last_good=True))
    assert client.variation("f", CTX, False) is True
    td.update(td.flag("f").variations("on", "off").variation_for_all(0))
    assert client.variation("f", VIP, False) is False
    assert fallbacks(metrics, "variation", "wrong_type") == 1


def test_last_good_variation_detail(td: TestData, metrics: CollectorRegistry,
                                    closing: Callable[[Any], Any]) -> None:
    """With last_good, variation_detail serves the last value too, with no variation index."""
    client = closing(LDClient(td_config(td), registry=metrics, last_good=True))
    assert client.variation_detail("f", CTX, False).value is True
    td.update(td.flag("f").variations("on", "off").variation_for_all(0))
    detail = client.variation_detail("f", CTX, False)
    assert (detail.value, detail.variation_index) == (True, None)
    assert fallbacks(metrics, "variation_detail", "wrong_type_last_good") == 1


def test_drop_in_is_an_ldclient(client: Any) -> None:
    """The drop-in passes isinstance checks against ldclient.LDClient."""
    assert isinstance(client, ldclient.LDClient)


def test_drop_in_default_start_wait_is_one_second() -> None:
    """The drop-in's default start_wait is 1 s, not the SDK's 5 s."""
    import inspect

    assert inspect.signature(LDClient).parameters["start_wait"].default == 1.0


def test_wrapped_client_is_an_ldclient(raw: Any, metrics: CollectorRegistry) -> None:
    """wrap(client) passes isinstance checks and keeps the client underneath."""
    wrapped = wrap(raw, registry=metrics)
    assert isinstance(wrapped, ldclient.LDClient)
    assert wrapped.__wrapped__ is raw


def test_wrapped_client_is_guarded(raw: Any, metrics: CollectorRegistry) -> None:
    """wrap(client) serves flags and gives the default for a bad context, counted."""
    wrapped = wrap(raw, registry=metrics)
    assert wrapped.variation("f", CTX, False) is True
    assert wrapped.variation("f", {"key": "u"}, "dflt") == "dflt"
    assert calls(metrics, "variation", "success") == 1
    assert fallbacks(metrics, "variation", "bad_context") == 1


def test_wrap_singleton(td: TestData, metrics: CollectorRegistry) -> None:
    """wrap(ldclient.get()) guards the SDK's singleton client."""
    ldclient.set_config(td_config(td))
    try:
        client = wrap(ldclient.get(), registry=metrics)
        assert client.__wrapped__ is ldclient.get()
        assert client.variation("f", CTX, False) is True
        assert client.variation("f", "user-1", "dflt") == "dflt"
        assert calls(metrics, "variation", "success") == 1
        assert fallbacks(metrics, "variation", "bad_context") == 1
    finally:
        ldclient._reset_client()


def test_unguarded_methods_pass_through(client: Any, raw: Any, metrics: CollectorRegistry
                                        ) -> None:
    """Methods the drop-in does not guard are the SDK's own, on both drop-in and wrapper."""
    wrapped = wrap(raw, registry=CollectorRegistry(), vendor="launchdarkly-wrapped")
    for c in (client, wrapped):
        assert c.is_initialized() is True
        assert c.get_sdk_key() == "sdk-test"
        assert c.is_offline() is False
        assert len(c.secure_mode_hash(CTX)) == 64
    assert sum(calls(metrics, op, o) for op in vg_ld._OPERATIONS for o in ("success", "error",
                                                                           "caller_error")) == 0


def test_user_hooks_run_for_variation(td: TestData, metrics: CollectorRegistry,
                                      closing: Callable[[Any], Any]) -> None:
    """A user's hook still sees each variation call, with method "variation"."""
    hook = Recorder()
    client = closing(LDClient(td_config(td, hooks=[hook]), registry=metrics))
    assert client.variation("f", CTX, False) is True
    client.variation_detail("color", CTX, "red")
    assert hook.seen == [("f", "variation", True), ("color", "variation_detail", "blue")]


def test_user_hooks_run_through_wrapper(raw: Any, metrics: CollectorRegistry) -> None:
    """A hook added to a wrapped client sees the wrapper's variation calls."""
    hook = Recorder()
    raw.add_hook(hook)
    wrap(raw, registry=metrics).variation("f", CTX, False)
    assert hook.seen == [("f", "variation", True)]


def test_health_ok_on_test_data(client: Any) -> None:
    """A client on TestData (no status reports) is healthy once initialised."""
    entry = ld_health()
    assert entry["status"] == "ok"
    assert entry["data_source"]["initialized"] is True
    assert entry["data_source"]["age_seconds"] == 0.0


# --------------------------------------------------------------------------------------------
# analytics events: the drop-in sends what the plain SDK sends
# --------------------------------------------------------------------------------------------
def _feature_event(fake: FakeLD, key: str) -> dict[str, Any] | None:
    for payload in list(fake.events):
        for event in payload:
            if event.get("kind") == "feature" and event.get("context", {}).get("key") == key:
                return event  # type: ignore[no-any-return]
    return None


def test_variation_events_carry_no_reason(fake: FakeLD, metrics: CollectorRegistry,
                                          closing: Callable[[Any], Any]) -> None:
    """The feature event of a drop-in variation has the plain SDK's fields: no reason."""
    fake.set_flag(flag("t", True, track_events=True))  # tracked: one feature event per call
    cfg = {"send_events": True, "flush_interval": 60}
    drop_in = closing(LDClient(stream_config(fake.url, **cfg), start_wait=5, registry=metrics))
    plain = closing(ldclient.LDClient(stream_config(fake.url, **cfg), start_wait=5))
    assert drop_in.variation("t", Context.create("via-drop-in"), False) is True
    assert plain.variation("t", Context.create("via-sdk"), False) is True
    plain.variation_detail("t", Context.create("via-sdk-detail"), False)
    drop_in.flush()
    plain.flush()
    assert wait_until(lambda: _feature_event(fake, "via-drop-in")
                    and _feature_event(fake, "via-sdk-detail"), timeout=10)
    ours, theirs = _feature_event(fake, "via-drop-in"), _feature_event(fake, "via-sdk")
    assert theirs is not None
    assert "reason" not in ours
    assert set(ours) == set(theirs)
    assert "reason" in _feature_event(fake, "via-sdk-detail")  # the check can see reasons


# --------------------------------------------------------------------------------------------
# against the fake service: stream, outage, recovery
# --------------------------------------------------------------------------------------------
def test_stream_flags_served(fake: FakeLD, metrics: CollectorRegistry,
                             closing: Callable[[Any], Any]) -> None:
    """Flags from the fake's stream are served."""
    client = closing(LDClient(stream_config(fake.url), start_wait=5, registry=metrics))
    assert client.is_initialized()
    assert client.variation("color", CTX, "red") == "blue"
    assert fake.count("GET", "/all") >= 1


def test_stream_health_ok(fake: FakeLD, metrics: CollectorRegistry,
                          closing: Callable[[Any], Any]) -> None:
    """A connected stream shows the vendor ok with data source state valid, age 0."""
    closing(LDClient(stream_config(fake.url), start_wait=5, registry=metrics))
    assert wait_until(lambda: ld_health()["data_source"]["state"] == "valid")
    entry = ld_health()
    assert entry["status"] == "ok"
    assert entry["data_source"]["initialized"] is True
    assert entry["data_source"]["error"] is None
    assert sample(metrics, "vendorguard_flag_data_age_seconds", vendor="launchdarkly") == 0.0


def test_stream_patch_arrives(fake: FakeLD, metrics: CollectorRegistry,
                              closing: Callable[[Any], Any]) -> None:
    """A patch pushed on the open stream changes the value served."""
    client = closing(LDClient(stream_config(fake.url), start_wait=5, registry=metrics))
    assert wait_until(lambda: fake.open_streams() == 1)
    assert fake.patch(flag("color", "green", version=2, variations=["blue", "green"])) == 1
    assert wait_until(lambda: client.variation("color", CTX, "red") == "green")


def test_polling_flags_served(fake: FakeLD, metrics: CollectorRegistry,
                              closing: Callable[[Any], Any]) -> None:
    """The drop-in in polling mode serves the fake's /sdk/latest-all flags."""
    client = closing(LDClient(stream_config(fake.url, stream=False), start_wait=5,
                              registry=metrics))
    assert client.variation("color", CTX, "red") == "blue"
    assert fake.count("GET", "/sdk/latest-all") >= 1


def _outage(fake: FakeLD, metrics: CollectorRegistry, closing: Callable[[Any], Any],
            **kw: Any) -> Any:
    client = closing(LDClient(stream_config(fake.url), start_wait=5, registry=metrics, **kw))
    assert client.variation("color", CTX, "red") == "blue"
    fake.stop()
    assert wait_until(lambda: client.data_source_status_provider.status.state.value
                    == "interrupted")
    return client


def test_outage_serves_last_values(fake: FakeLD, metrics: CollectorRegistry,
                                   closing: Callable[[Any], Any]) -> None:
    """With the service down mid-run, the flags last received are still served as successes."""
    client = _outage(fake, metrics, closing)
    assert client.variation("color", CTX, "red") == "blue"
    assert calls(metrics, "variation", "success") == 2


def test_outage_ok_until_stale_after(fake: FakeLD, metrics: CollectorRegistry,
                                     closing: Callable[[Any], Any]) -> None:
    """An interruption shorter than stale_after leaves the vendor ok."""
    _outage(fake, metrics, closing, stale_after=3600)
    entry = ld_health()
    assert entry["data_source"]["state"] == "interrupted"
    assert entry["status"] == "ok"


def test_outage_degrades_health(fake: FakeLD, metrics: CollectorRegistry,
                                closing: Callable[[Any], Any]) -> None:
    """Interrupted longer than stale_after: degraded, state interrupted, data age > 0."""
    _outage(fake, metrics, closing, stale_after=0.2)
    assert wait_until(lambda: ld_health()["status"] == "degraded", timeout=5)
    entry = ld_health()
    assert entry["data_source"]["state"] == "interrupted"
    assert entry["data_source"]["error"]
    assert entry["data_source"]["age_seconds"] > 0.2
    assert "stale" in entry["detail"]
    assert sample(metrics, "vendorguard_flag_data_age_seconds", vendor="launchdarkly") > 0.2


def test_recovery_restores_health_and_values(fake: FakeLD, metrics: CollectorRegistry,
                                             closing: Callable[[Any], Any]) -> None:
    """The service back: health ok again, the new flags and later patches are served."""
    client = _outage(fake, metrics, closing, stale_after=0.2)
    assert wait_until(lambda: ld_health()["status"] == "degraded", timeout=5)
    fake.set_flag(flag("color", "green", version=2, variations=["blue", "green"]))
    fake.start()
    assert wait_until(lambda: ld_health()["status"] == "ok", timeout=10)
    assert ld_health()["data_source"]["state"] == "valid"
    assert client.variation("color", CTX, "red") == "green"
    assert sample(metrics, "vendorguard_flag_data_age_seconds", vendor="launchdarkly") == 0.0
    assert wait_until(lambda: fake.open_streams() == 1)
    fake.patch(flag("color", "blue", version=3, variations=["blue", "green"]))
    assert wait_until(lambda: client.variation("color", CTX, "red") == "blue")


def test_closed_client_does_not_degrade_its_successor(fake: FakeLD, metrics: CollectorRegistry,
                                                      closing: Callable[[Any], Any]) -> None:
    """A client closed and replaced (as set_config does) leaves the vendor ok."""
    LDClient(stream_config(fake.url), start_wait=5, registry=metrics).close()
    closing(LDClient(stream_config(fake.url), start_wait=5, registry=metrics))
    assert wait_until(lambda: ld_health()["data_source"]["state"] == "valid")
    entry = ld_health()
    assert (entry["status"], entry["detail"]) == ("ok", None)


def test_unauthorized_shows_error(fake: FakeLD, metrics: CollectorRegistry,
                                  closing: Callable[[Any], Any]) -> None:
    """A 401 from the stream: not initialised, degraded, the data source error names 401."""
    fake.fail_with(401)
    client = closing(LDClient(stream_config(fake.url), start_wait=0.2, registry=metrics))
    assert client.variation("f", CTX, "dflt") == "dflt"
    assert wait_until(lambda: ld_health()["data_source"]["error"])
    entry = ld_health()
    assert entry["status"] == "degraded"
    assert "401" in entry["data_source"]["error"]


def test_service_unavailable_then_recovers(fake: FakeLD, metrics: CollectorRegistry,
                                           closing: Callable[[Any], Any]) -> None:
    """503 at start: defaults (not_ready); once the fake serves, flags and health come back."""
    fake.fail_with(503)
    client = closing(LDClient(stream_config(fake.url), start_wait=0.2, registry=metrics))
    assert client.variation("color", CTX, "red") == "red"
    assert fallbacks(metrics, "variation", "not_ready") == 1
    fake.fail_with(None)
    assert wait_until(client.is_initialized, timeout=10)
    assert client.variation("color", CTX, "red") == "blue"
    assert wait_until(lambda: ld_health()["status"] == "ok")


# --------------------------------------------------------------------------------------------
# the service never reachable
# --------------------------------------------------------------------------------------------
@pytest.fixture
def unreachable(metrics: CollectorRegistry, closing: Callable[[Any], Any],
                caplog: pytest.LogCaptureFixture) -> tuple[Any, float]:
    """A drop-in pointed at a port nothing listens on, start_wait 0.2 s; (client, ctor s)."""
    caplog.set_level(logging.WARNING, logger="vendorguard")
    started = time.monotonic()
    client = closing(LDClient(stream_config(refused_url()), start_wait=0.2, registry=metrics))
    return client, time.monotonic() - started


def test_unreachable_constructor_returns_quickly(unreachable: tuple[Any, float]) -> None:
    """With the service unreachable the constructor returns after start_wait, within 1 s."""
    client, took = unreachable
    assert not client.is_initialized()
    assert 0.15 <= took < 1.0


def test_unreachable_serves_defaults(unreachable: tuple[Any, float],
                                     metrics: CollectorRegistry) -> None:
    """Before any data arrives, defaults are served: outcome error, reason not_ready."""
    client, _ = unreachable
    assert client.variation("f", CTX, "dflt") == "dflt"
    assert client.variation_detail("f", CTX, "dflt").value == "dflt"
    assert calls(metrics, "variation", "error") == 1
    assert fallbacks(metrics, "variation", "not_ready") == 1
    assert fallbacks(metrics, "variation_detail", "not_ready") == 1


def test_unreachable_all_flags_state(unreachable: tuple[Any, float],
                                     metrics: CollectorRegistry) -> None:
    """Before any data arrives, all_flags_state is invalid, reason not_ready."""
    client, _ = unreachable
    assert not client.all_flags_state(CTX).valid
    assert fallbacks(metrics, "all_flags_state", "not_ready") == 1


def test_unreachable_evaluations_are_fast(unreachable: tuple[Any, float]) -> None:
    """1000 evaluations while the service is unreachable take well under a second."""
    client, _ = unreachable
    started = time.perf_counter()
    for _ in range(1000):
        client.variation("f", CTX, False)
    assert time.perf_counter() - started < 0.5


def test_unreachable_health_degraded(unreachable: tuple[Any, float]) -> None:
    """Never initialised: degraded, detail says the flags are not loaded."""
    entry = ld_health()
    assert entry["status"] == "degraded"
    assert "not loaded" in entry["detail"]
    assert entry["data_source"]["initialized"] is False
    assert entry["data_source"]["state"] == "initializing"


def test_unreachable_warning_logged(unreachable: tuple[Any, float],
                                    caplog: pytest.LogCaptureFixture) -> None:
    """Starting uninitialised logs one WARNING on the vendorguard logger."""
    lines = [r for r in caplog.get_records("setup") if r.name == "vendorguard"
             and r.levelno == logging.WARNING and "not initialised" in r.getMessage()]
    assert len(lines) == 1


def test_unreachable_sdk_warning_rate_limited(unreachable: tuple[Any, float],
                                              caplog: pytest.LogCaptureFixture) -> None:
    """The SDK's per-evaluation "not initialized" warning appears at most once in 1000 calls."""
    client, _ = unreachable
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ldclient"):
        for _ in range(1000):
            client.variation("f", CTX, False)
    flood = [r for r in caplog.records if r.getMessage().startswith(NOT_READY_WARNING)]
    assert len(flood) <= 1


def test_default_start_wait_bounds_the_constructor(metrics: CollectorRegistry,
                                                   closing: Callable[[Any], Any]) -> None:
    """Without start_wait the constructor waits about 1 s when the service is unreachable."""
    started = time.monotonic()
    client = closing(LDClient(stream_config(refused_url()), registry=metrics))
    took = time.monotonic() - started
    assert not client.is_initialized()
    assert 0.9 <= took < 2.0


def test_defaults_while_not_ready_do_not_degrade_the_vendor(
        metrics: CollectorRegistry, closing: Callable[[Any], Any]) -> None:
    """Health follows the data source: not_ready defaults alone never make it degraded."""
    offline = closing(LDClient(Config("sdk-test", offline=True), registry=metrics))
    for _ in range(20):
        assert offline.variation("flag", Context.create("u"), "dflt") == "dflt"
    entry = ld_health()
    assert calls(metrics, "variation", "error") == 20
    assert entry["error_rate"] == 1.0
    assert entry["status"] == "ok"


def test_closing_the_client_detaches_its_health(
        metrics: CollectorRegistry, td: TestData) -> None:
    """A closed client no longer speaks for the vendor's health."""
    client = LDClient(td_config(td), registry=metrics)
    vendor = vg.vendor("launchdarkly")
    assert len(vendor.health_checks) == 1
    client.close()
    assert vendor.health_checks == []
    assert ld_health()["status"] == "ok"
