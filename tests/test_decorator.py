"""The guard decorator: functions, coroutines, methods, metadata, generators, describe()."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.conftest import sample

LAYERS = ["observe", "fallback", "total deadline", "retry", "breaker", "bulkhead",
          "attempt timeout", "the vendor call"]


class Boom(Exception):
    """A vendor failure."""



pytestmark = pytest.mark.usefixtures("no_backoff")



@pytest.fixture
def vendor(metrics: CollectorRegistry) -> vg.Vendor:
    return vg.Vendor("acme", registry=metrics, retry=None)


def _successes(reg: CollectorRegistry, operation: str = "op") -> float:
    return sample(reg, "vendorguard_calls_total", vendor="acme", operation=operation,
                  outcome="success")


# -- what can be decorated --------------------------------------------------------------------


def test_plain_function(vendor: vg.Vendor, metrics: CollectorRegistry) -> None:
    """A guarded plain function returns its result and is counted."""
    @vendor.guard("op")
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert add(1, b=2) == 3
    assert _successes(metrics) == 1


def test_plain_function_failure_goes_to_fallback(vendor: vg.Vendor) -> None:
    """A guarded plain function's failure is served by its fallback."""
    @vendor.guard("op", fallback="fb")
    def broken() -> str:
        raise Boom("down")

    assert broken() == "fb"


def test_async_function(vendor: vg.Vendor, metrics: CollectorRegistry) -> None:
    """A guarded coroutine function stays one and is counted when awaited."""
    @vendor.guard("op")
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch(21)) == 42
    assert _successes(metrics) == 1


def test_async_function_failure_goes_to_fallback(vendor: vg.Vendor) -> None:
    """An error raised after an await inside the coroutine is caught by the guard."""
    @vendor.guard("op", fallback="fb")
    async def fetch() -> str:
        await asyncio.sleep(0)
        raise Boom("down")

    assert asyncio.run(fetch()) == "fb"


def test_instance_method(vendor: vg.Vendor, metrics: CollectorRegistry) -> None:
    """A guarded instance method receives self and its arguments."""
    class Api:
        def __init__(self) -> None:
            self.base = 10

        @vendor.guard("op")
        def get(self, x: int) -> int:
            return self.base + x

    assert Api().get(5) == 15
    assert _successes(metrics) == 1


def test_async_instance_method(vendor: vg.Vendor) -> None:
    """A guarded async instance method receives self and is awaited through the guard."""
    class Api:
        base = 1

        @vendor.guard("op", fallback=-1)
        async def get(self, x: int) -> int:
            if x < 0:
                raise Boom("down")
            return self.base + x

    api = Api()
    assert asyncio.run(api.get(1)) == 2
    assert asyncio.run(api.get(-5)) == -1


def _class_and_static(vendor: vg.Vendor) -> type:
    class Api:
        prefix = "api"

        @vendor.guard("cls.above")
        @classmethod
        def above_cls(cls, x: int) -> str:
            return f"{cls.prefix}:{x}"

        @classmethod
        @vendor.guard("cls.below")
        def below_cls(cls, x: int) -> str:
            return f"{cls.prefix}:{x}"

        @vendor.guard("static.above")
        @staticmethod
        def above_static(x: int) -> str:
            return f"static:{x}"

        @staticmethod
        @vendor.guard("static.below")
        def below_static(x: int) -> str:
            return f"static:{x}"

    return Api


@pytest.mark.parametrize(
    ("method", "operation", "expected"),
    [("above_cls", "cls.above", "api:1"), ("below_cls", "cls.below", "api:1"),
     ("above_static", "static.above", "static:1"),
     ("below_static", "static.below", "static:1")],
    ids=["classmethod-guard-above", "classmethod-guard-below", "staticmethod-guard-above",
         "staticmethod-guard-below"],
)
@pytest.mark.parametrize("on", ["class", "instance"], ids=["on-class", "on-instance"])
def test_classmethod_and_staticmethod(method: str, operation: str, expected: str, on: str,
                                      vendor: vg.Vendor, metrics: CollectorRegistry) -> None:
    """Class and static methods work with the guard applied above or below the builtin."""
    api = _class_and_static(vendor)
    target = api if on == "class" else api()
    assert getattr(target, method)(1) == expected
    assert _successes(metrics, operation) == 1


def test_classmethod_subclass_gets_its_own_cls(vendor: vg.Vendor) -> None:
    """A guarded classmethod called on a subclass receives the subclass."""
    api = _class_and_static(vendor)

    class Sub(api):  # type: ignore[misc, valid-type]
        prefix = "sub"

    assert Sub.above_cls(2) == "sub:2"


@pytest.mark.parametrize("kind", [classmethod, staticmethod], ids=["classmethod", "staticmethod"])
def test_guard_above_keeps_descriptor_type(kind: type, vendor: vg.Vendor) -> None:
    """The guard applied above @classmethod/@staticmethod returns the same descriptor type."""
    def fn(*args: Any) -> None: ...

    assert type(vendor.guard("op")(kind(fn))) is kind


# -- metadata ---------------------------------------------------------------------------------


def _documented(a: int, *, b: str = "x") -> str:
    """Fetch something from the vendor."""
    return f"{a}{b}"


async def _adocumented(a: int) -> int:
    """Fetch something asynchronously."""
    return a


@pytest.mark.parametrize("fn", [_documented, _adocumented], ids=["sync", "async"])
def test_preserves_name_doc_and_wrapped(fn: Any, vendor: vg.Vendor) -> None:
    """The guarded function keeps __name__, __doc__, __qualname__ and exposes __wrapped__."""
    guarded = vendor.guard("op")(fn)
    assert guarded.__name__ == fn.__name__
    assert guarded.__qualname__ == fn.__qualname__
    assert guarded.__doc__ == fn.__doc__
    assert guarded.__wrapped__ is fn


@pytest.mark.parametrize("fn", [_documented, _adocumented], ids=["sync", "async"])
def test_preserves_signature(fn: Any, vendor: vg.Vendor) -> None:
    """inspect.signature of the guarded function is the original's."""
    assert inspect.signature(vendor.guard("op")(fn)) == inspect.signature(fn)


def test_guarded_classmethod_keeps_name(vendor: vg.Vendor) -> None:
    """A guarded classmethod keeps its name and docstring."""
    api = _class_and_static(vendor)
    assert api.above_cls.__name__ == "above_cls"
    assert api.below_static.__name__ == "below_static"


# -- refused ----------------------------------------------------------------------------------


def _gen() -> Iterator[int]:
    yield 1


async def _agen() -> AsyncIterator[int]:
    yield 1


@pytest.mark.parametrize(
    "fn", [_gen, _agen, staticmethod(_gen), classmethod(_agen)],
    ids=["generator", "async-generator", "static-generator", "class-async-generator"])
def test_generator_function_raises_at_decoration(fn: Any, vendor: vg.Vendor) -> None:
    """Decorating a generator or async generator function raises TypeError at once."""
    with pytest.raises(TypeError, match="generator"):
        vendor.guard("op")(fn)


@pytest.mark.parametrize("thing", [42, "fn", None], ids=["int", "str", "none"])
def test_non_callable_raises_at_decoration(thing: Any, vendor: vg.Vendor) -> None:
    """Decorating something that is not callable raises TypeError."""
    with pytest.raises(TypeError, match="callable"):
        vendor.guard("op")(thing)


@pytest.mark.parametrize("operation", ["", None, 3], ids=["empty", "none", "int"])
def test_bad_operation_name_raises(operation: Any, vendor: vg.Vendor) -> None:
    """An empty or non-string operation name is refused when the guard is built."""
    with pytest.raises(ValueError, match="operation"):
        vendor.guard(operation)


def test_async_callable_object_is_guarded_on_async_path(vendor: vg.Vendor) -> None:
    """A callable object whose __call__ is async is awaited inside the guard."""
    class Fetch:
        async def __call__(self) -> str:
            raise Boom("down")

    guarded = vendor.guard("op", fallback="fb")(Fetch())
    assert asyncio.run(guarded()) == "fb"


# -- .vendorguard and describe() --------------------------------------------------------------


def test_vendorguard_attribute_is_the_guard(vendor: vg.Vendor) -> None:
    """The guarded function exposes its compiled Guard as .vendorguard."""
    guarded = vendor.guard("mail.send")(lambda: None)
    g = guarded.vendorguard
    assert isinstance(g, vg.Guard)
    assert (g.vendor, g.operation) == (vendor, "mail.send")


def test_vendorguard_attribute_on_async_function(vendor: vg.Vendor) -> None:
    """A guarded coroutine function exposes .vendorguard too."""
    async def fetch() -> None: ...

    assert isinstance(vendor.guard("op")(fetch).vendorguard, vg.Guard)


def test_vendorguard_attribute_on_guarded_classmethod(vendor: vg.Vendor) -> None:
    """A guarded classmethod exposes .vendorguard through the class."""
    api = _class_and_static(vendor)
    assert api.above_cls.vendorguard.operation == "cls.above"


def _layer_names(guard: vg.Guard) -> list[str]:
    return [layer.split(":")[0] for layer in guard.describe()]


def test_describe_lists_layers_in_pipeline_order(metrics: CollectorRegistry) -> None:
    """describe() lists every layer outermost first, in the order of the design."""
    v = vg.Vendor("acme", registry=metrics, timeout=vg.Timeout(attempt=1.0, total=3.0),
                  retry=vg.Retry(attempts=3), breaker=vg.Breaker(failures=5),
                  bulkhead=vg.Bulkhead(max_concurrent=4))
    guarded = v.guard("op", fallback=vg.LastGood())(lambda: 1)
    assert _layer_names(guarded.vendorguard) == LAYERS


def test_describe_shows_configured_values(metrics: CollectorRegistry) -> None:
    """describe() reports the configured bounds of each layer."""
    v = vg.Vendor("acme", registry=metrics, timeout=vg.Timeout(attempt=1.5, total=4.0),
                  retry=vg.Retry(attempts=4), bulkhead=vg.Bulkhead(max_concurrent=7))
    described = v.guard("op", fallback=0)(lambda: 1).vendorguard.describe()
    layers = dict(zip(LAYERS, described, strict=True))
    assert "4.0" in layers["total deadline"]
    assert "4 attempts" in layers["retry"]
    assert "7 concurrent" in layers["bulkhead"]
    assert "1.5" in layers["attempt timeout"]


def test_describe_of_minimal_guard_says_none(metrics: CollectorRegistry) -> None:
    """A guard without fallback, retry, bulkhead or timeout still lists every layer, as none."""
    v = vg.Vendor("acme", registry=metrics, retry=None)
    layers = v.guard("op")(lambda: 1).vendorguard.describe()
    assert [layer.split(":")[0] for layer in layers] == LAYERS
    by_name = dict(zip(LAYERS, layers, strict=True))
    for name in ("fallback", "retry", "bulkhead", "attempt timeout"):
        assert "none" in by_name[name]


def test_per_guard_overrides_apply(metrics: CollectorRegistry) -> None:
    """timeout= and retry= passed to guard() override the vendor's policies for it."""
    v = vg.Vendor("acme", registry=metrics, retry=vg.Retry(attempts=5))
    g = v.guard("op", retry=None, timeout=vg.Timeout(attempt=2.0))(lambda: 1).vendorguard
    assert (g.retry, g.timeout) == (None, vg.Timeout(attempt=2.0))
    attempts: list[int] = []

    @v.guard("other", retry=vg.Retry(attempts=2))
    def flaky() -> None:
        attempts.append(1)
        raise Boom("down")

    with pytest.raises(Boom):
        flaky()
    assert len(attempts) == 2
