"""Classification of an attempt's failure: what retry, breaker and fallback do with it.

A classifier is a callable taking the exception and returning a :class:`Kind` or, when it
knows more (a Retry-After, or that the failure was a timeout), a :class:`Verdict`. An
exception that carries its own ``vendorguard_verdict`` (a :class:`Verdict`, as injected faults
do) is judged by it, whatever the guard's classifier.

- ``caller_error``: the request was wrong; raised at once, never retried, no fallback, not
  counted by the breaker.
- ``transient``: retry may help; counts against the breaker.
- ``ambiguous``: the vendor may have acted; retried only for idempotent operations.
- ``fatal``: a vendor failure retry will not fix; counts against the breaker.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from .errors import CircuitOpenError

__all__ = ["Classifier", "Kind", "Verdict", "default_classifier"]


class Kind(str, enum.Enum):
    """The class of an attempt's failure."""

    CALLER_ERROR = "caller_error"
    TRANSIENT = "transient"
    AMBIGUOUS = "ambiguous"
    FATAL = "fatal"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Verdict:
    """A classification with detail: ``retry_after`` seconds the vendor asked us to wait, and
    whether the failure was a timeout (outcome ``timeout`` rather than ``error``)."""

    kind: Kind
    retry_after: float | None = None
    timeout: bool = False


Classifier = Callable[[Exception], "Kind | Verdict"]


def default_classifier(exc: Exception) -> Kind | Verdict:
    """Classify exceptions from plain Python callables.

    ``TypeError`` is a caller error (a wrong call); a refused connection is transient (nothing
    was sent); other connection failures and timeouts are ambiguous (the vendor may have
    acted); an inner guard's open circuit is fatal for this call; anything else is transient.
    """
    if isinstance(exc, TypeError):
        return Kind.CALLER_ERROR
    if isinstance(exc, ConnectionRefusedError):
        return Kind.TRANSIENT
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return Kind.AMBIGUOUS
    if isinstance(exc, CircuitOpenError):
        return Kind.FATAL
    return Kind.TRANSIENT
