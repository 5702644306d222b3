"""Vendor.wrap: a client proxy whose listed methods, and only those, are guarded."""

from __future__ import annotations

import asyncio
import copy
import inspect
import pickle
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.conftest import sample


class Boom(Exception):
    """A vendor failure."""



pytestmark = pytest.mark.usefixtures("no_backoff")



class Charges:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def create(self, amount: int) -> str:
        self.log.append(f"create {amount}")
        if amount < 0:
            raise Boom("negative")
        return f"ch_{amount}"

    def list(self) -> list[str]:
        raise Boom("list down")


class V1:
    def __init__(self, log: list[str]) -> None:
        self.charges = Charges(log)

    def other(self) -> str:
        raise Boom("other down")


class Client:
    """A fake vendor SDK client."""

    def __init__(self, api_key: str = "key") -> None:
        self.api_key = api_key
        self.log: list[str] = []
        self.v1 = V1(self.log)
        self.fail = False

    def __repr__(self) -> str:
        return f"<Client api_key={self.api_key!r}>"

    def send(self, to: str) -> str:
        self.log.append(f"send {to}")
        if self.fail:
            raise Boom("send down")
        return f"sent to {to}"

    def other(self) -> str:
        self.log.append("other")
        if self.fail:
            raise Boom("other down")
        return "other"

    async def asend(self, to: str) -> str:
        await asyncio.sleep(0)
        self.log.append(f"asend {to}")
        if self.fail:
            raise Boom("asend down")
        return f"async sent to {to}"

    def __enter__(self) -> Client:
        self.log.append("enter")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.log.append("exit")

    async def __aenter__(self) -> Client:
        self.log.append("aenter")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.log.append("aexit")


def _vendor(metrics: CollectorRegistry) -> vg.Vendor:
    return vg.Vendor("acme", registry=metrics, retry=None)


def _calls(reg: CollectorRegistry, operation: str, outcome: str = "success") -> float:
    return sample(reg, "vendorguard_calls_total", vendor="acme", operation=operation,
                  outcome=outcome)


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def proxy(client: Client, metrics: CollectorRegistry) -> Any:
    return _vendor(metrics).wrap(
        client, operations={"send": "mail.send", "asend": "mail.asend",
                            "v1.charges.create": "charges.create"},
        fallback="fb")


# -- transparency -----------------------------------------------------------------------------


def test_proxy_is_instance_of_client_class(proxy: Any) -> None:
    """isinstance sees the wrapped client's class through the proxy."""
    assert isinstance(proxy, Client)


def test_proxy_is_a_vendor_proxy(proxy: Any) -> None:
    """The proxy is a vg.VendorProxy wrapping the client."""
    assert isinstance(proxy, vg.VendorProxy)


def test_proxy_attributes_are_the_clients(proxy: Any, client: Client) -> None:
    """Plain attribute access reads the wrapped client's attributes."""
    assert proxy.api_key == "key"
    assert proxy.log is client.log


def test_proxy_attribute_assignment_reaches_client(proxy: Any, client: Client) -> None:
    """Setting an attribute on the proxy sets it on the client."""
    proxy.api_key = "rotated"
    assert client.api_key == "rotated"


def test_proxy_repr_is_the_clients(proxy: Any, client: Client) -> None:
    """repr(proxy) equals repr(client)."""
    assert repr(proxy) == repr(client) == "<Client api_key='key'>"


# -- guarded and unguarded methods ------------------------------------------------------------


def test_listed_method_is_guarded(proxy: Any, metrics: CollectorRegistry) -> None:
    """A listed method's call is counted under its operation name."""
    assert proxy.send("bob") == "sent to bob"
    assert _calls(metrics, "mail.send") == 1


def test_listed_method_failure_is_served_by_fallback(proxy: Any, client: Client,
                                                     metrics: CollectorRegistry) -> None:
    """A listed method's failure is served by the wrap's fallback."""
    client.fail = True
    assert proxy.send("bob") == "fb"
    assert client.log == ["send bob"]
    assert _calls(metrics, "mail.send", "error") == 1


def test_unlisted_method_is_untouched(proxy: Any, client: Client) -> None:
    """An unlisted method is the client's own bound method."""
    assert proxy.other == client.other
    assert proxy.other() == "other"


def test_unlisted_method_failure_is_not_guarded(proxy: Any, client: Client,
                                                metrics: CollectorRegistry) -> None:
    """An unlisted method's failure propagates, with no fallback and no metric."""
    client.fail = True
    with pytest.raises(Boom):
        proxy.other()
    assert metrics.get_sample_value(
        "vendorguard_calls_total",
        {"vendor": "acme", "operation": "other", "outcome": "error"}) is None


def test_guarded_method_keeps_its_name(proxy: Any) -> None:
    """A guarded method keeps the wrapped method's name and signature."""
    assert proxy.send.__name__ == "send"
    assert list(inspect.signature(proxy.send).parameters) == ["to"]


def test_list_form_operations_use_attribute_names(client: Client,
                                                  metrics: CollectorRegistry) -> None:
    """operations given as a list guard those methods under their own names."""
    p = _vendor(metrics).wrap(client, operations=["send"], fallback="fb")
    client.fail = True
    assert p.send("bob") == "fb"
    with pytest.raises(Boom):
        p.other()
    assert _calls(metrics, "send", "error") == 1


def test_wrap_without_fallback_raises_vendor_error(client: Client,
                                                   metrics: CollectorRegistry) -> None:
    """Without a fallback a guarded method raises the vendor's own exception."""
    p = _vendor(metrics).wrap(client, operations=["send"])
    client.fail = True
    with pytest.raises(Boom, match="send down"):
        p.send("bob")
    assert _calls(metrics, "send", "error") == 1


# -- sub-resources ----------------------------------------------------------------------------


def test_dotted_path_is_guarded(proxy: Any, metrics: CollectorRegistry) -> None:
    """client.v1.charges.create is guarded under its operation name."""
    assert proxy.v1.charges.create(5) == "ch_5"
    assert proxy.v1.charges.create(-1) == "fb"
    assert _calls(metrics, "charges.create") == 1
    assert _calls(metrics, "charges.create", "error") == 1


def test_dotted_sibling_passes_through(proxy: Any) -> None:
    """client.v1.other, not listed, is the raw method: failures propagate."""
    with pytest.raises(Boom, match="other down"):
        proxy.v1.other()


def test_unlisted_method_of_guarded_namespace_passes_through(proxy: Any) -> None:
    """client.v1.charges.list, a sibling of a guarded method, is not guarded."""
    with pytest.raises(Boom, match="list down"):
        proxy.v1.charges.list()


def test_sub_resource_keeps_its_class(proxy: Any) -> None:
    """The proxied sub-resource is still an instance of its own class."""
    assert isinstance(proxy.v1, V1)
    assert isinstance(proxy.v1.charges, Charges)


def test_sub_resource_attribute_passes_through(proxy: Any, client: Client) -> None:
    """Plain attributes of a sub-resource are the client's."""
    assert proxy.v1.charges.log is client.log


# -- async ------------------------------------------------------------------------------------


def test_async_method_stays_a_coroutine_function(proxy: Any) -> None:
    """A coroutine method is guarded by a coroutine function; a sync one by a sync one."""
    assert inspect.iscoroutinefunction(proxy.asend)
    assert not inspect.iscoroutinefunction(proxy.send)


def test_async_method_is_guarded(proxy: Any, metrics: CollectorRegistry) -> None:
    """Awaiting a guarded coroutine method returns its result and counts the call."""
    assert asyncio.run(proxy.asend("amy")) == "async sent to amy"
    assert _calls(metrics, "mail.asend") == 1


def test_async_method_error_is_caught_by_guard(proxy: Any, client: Client,
                                               metrics: CollectorRegistry) -> None:
    """An error raised while awaiting the coroutine is served by the fallback."""
    client.fail = True
    assert asyncio.run(proxy.asend("amy")) == "fb"
    assert _calls(metrics, "mail.asend", "error") == 1


def test_async_callable_object_is_guarded_on_async_path(metrics: CollectorRegistry) -> None:
    """An attribute that is an object with an async __call__ is guarded as async."""
    class AsyncCall:
        async def __call__(self, x: int) -> int:
            raise Boom("down")

    class Holder:
        def __init__(self) -> None:
            self.run = AsyncCall()

    p = _vendor(metrics).wrap(Holder(), operations=["run"], fallback="fb")
    assert asyncio.run(p.run(1)) == "fb"


# -- context managers, copy, pickle -----------------------------------------------------------


def test_with_returns_the_proxy(proxy: Any, client: Client, metrics: CollectorRegistry) -> None:
    """``with proxy as c`` gives the proxy, so calls on c stay guarded."""
    with proxy as c:
        assert c is proxy
        c.send("bob")
    assert client.log == ["enter", "send bob", "exit"]
    assert _calls(metrics, "mail.send") == 1


def test_async_with_returns_the_proxy(proxy: Any, client: Client) -> None:
    """``async with proxy as c`` gives the proxy."""
    async def scenario() -> Any:
        async with proxy as c:
            return c

    assert asyncio.run(scenario()) is proxy
    assert client.log == ["aenter", "aexit"]


def test_with_propagates_exceptions_to_client_exit(proxy: Any, client: Client) -> None:
    """An error in the with-block reaches the client's __exit__ and is re-raised."""
    with pytest.raises(KeyError), proxy:
        raise KeyError("x")
    assert client.log == ["enter", "exit"]


def test_copy_is_a_guarded_proxy(proxy: Any, client: Client,
                                 metrics: CollectorRegistry) -> None:
    """copy.copy gives a new proxy of a copy of the client that is still guarded."""
    dup = copy.copy(proxy)
    assert dup is not proxy
    assert isinstance(dup, Client)
    assert dup.__wrapped__ is not client
    dup.fail = True
    assert dup.send("bob") == "fb"
    assert _calls(metrics, "mail.send", "error") == 1


def test_deepcopy_is_a_guarded_proxy(proxy: Any, metrics: CollectorRegistry) -> None:
    """copy.deepcopy gives an independent, still guarded proxy."""
    dup = copy.deepcopy(proxy)
    assert dup.log is not proxy.log
    assert dup.v1.charges.create(-1) == "fb"
    assert _calls(metrics, "charges.create", "error") == 1


def test_pickling_raises_type_error(proxy: Any) -> None:
    """Pickling a proxy raises TypeError (pickle the client instead)."""
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(proxy)


# -- bad operations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operations", "error"),
    [({}, ValueError), ([], ValueError), (["_private"], ValueError),
     ({"v1._internal.create": "op"}, ValueError), (["v1..create"], ValueError),
     ([""], ValueError), ({"send": ""}, ValueError), ({"send": 3}, ValueError),
     ("send", TypeError)],
    ids=["empty-mapping", "empty-list", "private", "private-segment", "empty-segment",
         "empty-path", "empty-operation", "non-str-operation", "str"],
)
def test_bad_operations_raise_at_wrap_time(operations: Any, error: type[Exception],
                                           client: Client, metrics: CollectorRegistry) -> None:
    """Invalid operations are refused when wrapping, not when calling."""
    with pytest.raises(error):
        _vendor(metrics).wrap(client, operations=operations)
