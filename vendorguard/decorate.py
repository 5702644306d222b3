"""Wrapping a function (or method, classmethod, staticmethod) with a compiled guard."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

from .pipeline import Guard, is_async_callable

__all__ = ["decorate"]

P = ParamSpec("P")
R = TypeVar("R")


@overload
def decorate(compiled: Guard, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
@overload
def decorate(compiled: Guard, fn: Callable[P, R]) -> Callable[P, R]: ...
def decorate(compiled: Guard, fn: Any) -> Any:
    """Wrap ``fn`` (function, method, classmethod or staticmethod) with a compiled guard."""
    if isinstance(fn, (classmethod, staticmethod)):
        return type(fn)(decorate(compiled, fn.__func__))
    if not callable(fn):
        raise TypeError(f"{compiled.name}.guard({compiled.operation!r}) needs a callable, "
                        f"got {fn!r}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{compiled.name}.guard({compiled.operation!r}) cannot guard the generator "
            f"function {fn.__qualname__}: its body runs after the guard returns. Guard a "
            f"function that returns a list, or guard each vendor call inside it.")
    if compiled.fallback is not None:
        compiled.fallback.bind(compiled, fn)
    if is_async_callable(fn):
        @functools.wraps(fn)
        async def async_guarded(*args: Any, **kwargs: Any) -> Any:
            return await compiled.run_async(fn, args, kwargs)

        async_guarded.vendorguard = compiled  # type: ignore[attr-defined]
        return async_guarded
    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        return compiled.run_sync(fn, args, kwargs)  # read per call: a reload swaps it

    guarded.vendorguard = compiled  # type: ignore[attr-defined]
    return guarded
