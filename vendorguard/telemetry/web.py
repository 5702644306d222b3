"""What the telemetry server's routes share: the request they see and how they answer."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

__all__ = ["COMMON", "JSON", "TEXT", "Headers", "Request", "Response", "Throttle", "answer",
           "plain", "to_json"]

Headers = list[tuple[str, str]]
Response = tuple[int, Headers, bytes]
TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"
COMMON: Headers = [("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]


def _no_body() -> bytes:
    return b""


@dataclass(frozen=True, slots=True)
class Request:
    """What routing needs from one request, whichever app received it."""

    method: str
    path: str
    accept: str = ""
    authorization: bytes | None = None
    content_type: str = ""
    body: Callable[[], bytes | None] = _no_body  # read on demand; None when too long


class Throttle:
    """At most one log record per ``every`` seconds, counting the ones left out."""

    def __init__(self, every: float) -> None:
        self.every, self.next, self.skipped = every, 0.0, 0
        self.lock = threading.Lock()

    def __call__(self) -> int | None:
        """How many were left out since the last record, or None to leave this one out."""
        with self.lock:
            now = time.monotonic()
            if now < self.next:
                self.skipped += 1
                return None
            skipped, self.skipped, self.next = self.skipped, 0, now + self.every
            return skipped




def plain(status: HTTPStatus, *extra: tuple[str, str]) -> Response:
    return status.value, [("Content-Type", TEXT), *COMMON, *extra], \
        f"{status.phrase}\n".encode()


def answer(status: int, value: Any) -> Response:
    return status, [("Content-Type", JSON), *COMMON], to_json(value)


def to_json(value: Any) -> bytes:
    return json.dumps(_finite(value), separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``null``: they are not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
