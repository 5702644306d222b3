"""A client proxy (on wrapt) whose listed methods go through guards.

``isinstance``, attribute access and ``repr`` see the wrapped client; unlisted attributes pass
through untouched; sub-resource namespaces (``client.v1.payment_intents.create``) are wrapped
recursively by dotted path. ``with proxy as c`` gives back the proxy, not the raw client.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import wrapt

from .pipeline import Guard, is_async_callable

__all__ = ["VendorProxy", "build_operations"]


def build_operations(operations: Mapping[str, str] | Iterable[str]) -> dict[str, str]:
    """Validate ``operations`` into ``{attribute path: operation name}``."""
    if isinstance(operations, str):
        raise TypeError("operations must be a mapping or a list of attribute names, got a str")
    pairs = (operations.items() if isinstance(operations, Mapping)
             else ((name, name) for name in operations))
    ops: dict[str, str] = {}
    for path, op in pairs:
        if not isinstance(path, str) or not path or any(
                not part or part.startswith("_") for part in path.split(".")):
            raise ValueError(f"operations: attribute path must be dotted public names, "
                             f"got {path!r}")
        if not isinstance(op, str) or not op:
            raise ValueError(f"operations: operation name for {path!r} must be a non-empty "
                             f"string, got {op!r}")
        ops[path] = op
    if not ops:
        raise ValueError("operations must name at least one method to guard")
    return ops


class VendorProxy(wrapt.BaseObjectProxy):  # type: ignore[type-arg]
    """Guards the methods named in its operations; everything else is the wrapped object's."""

    def __init__(self, wrapped: Any, guards: dict[str, Guard], prefix: str) -> None:
        super().__init__(wrapped)
        self._self_guards = guards
        self._self_prefix = prefix
        self._self_async: dict[str, bool] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            return getattr(self.__wrapped__, name)
        attr = getattr(self.__wrapped__, name)
        path = self._self_prefix + name
        found = self._self_guards.get(path)
        if found is not None and callable(attr):
            is_async = self._self_async.get(name)
            if is_async is None:
                is_async = self._self_async[name] = is_async_callable(attr)
            return _bind(found, attr, is_async)
        prefix = path + "."
        if any(key.startswith(prefix) for key in self._self_guards):
            return VendorProxy(attr, self._self_guards, prefix)
        return attr

    def __repr__(self) -> str:
        return repr(self.__wrapped__)

    def __enter__(self) -> VendorProxy:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self.__wrapped__.__exit__(*exc)

    async def __aenter__(self) -> VendorProxy:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc)

    def __copy__(self) -> VendorProxy:
        return VendorProxy(copy.copy(self.__wrapped__), self._self_guards, self._self_prefix)

    def __deepcopy__(self, memo: dict[int, Any]) -> VendorProxy:
        return VendorProxy(copy.deepcopy(self.__wrapped__, memo), self._self_guards,
                           self._self_prefix)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a vendorguard proxy cannot be pickled: pickle the wrapped client and "
                        "wrap it again where it is loaded")


def _bind(compiled: Guard, method: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    if compiled.fallback is not None:
        compiled.fallback.bind(compiled, method)
    if is_async:
        @functools.wraps(method)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            return await compiled.run_async(method, args, kwargs)

        return guarded_async

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        return compiled.run_sync(method, args, kwargs)  # read per call: a reload swaps it

    return guarded
