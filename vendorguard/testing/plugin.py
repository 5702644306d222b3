"""The vendorguard pytest plugin (registered through the ``pytest11`` entry point).

Gives every test:

- the ``vendorguard`` fixture (:class:`Harness`): fault injection, a fake clock for breaker
  resets, the application's vendors with closed circuits and counts from zero, vendors made
  during the test removed after it, testing mode (zero backoff), and assertion helpers::

      def test_signup_survives_sendgrid_outage(vendorguard):
          with vendorguard.inject("sendgrid", vendorguard.outage()):
              signup(user)
          assert vendorguard.fallbacks("sendgrid") == 1
          assert vendorguard.state("sendgrid") == "closed"

- the marker ``@pytest.mark.vendor_outage("sendgrid", "stripe")``: the test runs with those
  vendors refusing connections.

Fault injection is enabled while pytest runs. The fixture's isolation applies to tests that
use it (or the marker); other tests see vendorguard as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .harness import Harness

# Nothing of vendorguard is imported at the top: pytest imports plugins before coverage
# starts, and the package's own modules must be measured.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vendor_outage(*vendors): run the test with those vendors refusing "
                   "connections (vendorguard fault injection)")
    from . import enable

    enable()


@pytest.fixture
def vendorguard() -> Iterator[Harness]:
    """Fault injection, a fake breaker clock, isolated vendors and metrics, zero backoff."""
    from .harness import isolated

    with isolated() as harness:
        yield harness


@pytest.fixture(autouse=True)
def _vendorguard_outage(request: pytest.FixtureRequest) -> Iterator[None]:
    marker = request.node.get_closest_marker("vendor_outage")
    if marker is None:
        yield
        return
    if not marker.args or not all(isinstance(v, str) for v in marker.args):
        raise pytest.UsageError("vendor_outage needs vendor names: "
                                "@pytest.mark.vendor_outage('sendgrid')")
    from . import inject, outage

    with ExitStack() as stack:
        for name in marker.args:
            stack.enter_context(inject(name, outage()))
        yield
