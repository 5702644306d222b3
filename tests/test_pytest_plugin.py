"""The pytest plugin, run by pytest's own pytester: fixture, marker, isolation, registration."""

from __future__ import annotations

import pytest

SUITE = '''
import pytest
import vendorguard as vg
from vendorguard import testing

def make():
    v = vg.Vendor("mail", retry=vg.Retry(attempts=3),
                  breaker=vg.Breaker(failures=2, reset_after=30.0))

    @v.guard("send", fallback="queued")
    def send(to):
        return "sent"

    return v, send

def test_outage_served_by_fallback(vendorguard):
    v, send = make()
    with vendorguard.inject("mail", vendorguard.outage()):
        assert send("a") == "queued"
    assert vendorguard.calls("mail", "error") == 1
    assert vendorguard.retries("mail") == 2  # the second is scheduled, then turned away
    assert vendorguard.fallbacks("mail") == 1
    assert vendorguard.state("mail") == "open"
    assert send("b") == "queued"
    assert vendorguard.calls("mail", "rejected") == 1
    vendorguard.advance(30.0)
    assert send("c") == "sent"
    assert vendorguard.state("mail") == "closed"

def test_each_test_starts_clean(vendorguard):
    v, send = make()
    assert send("a") == "sent"
    assert vendorguard.calls("mail") == 1
    assert vendorguard.state("mail") == "closed"

@pytest.mark.vendor_outage("mail")
def test_marker_takes_the_vendor_down(vendorguard):
    v, send = make()
    assert send("a") == "queued"
    assert vendorguard.calls("mail", "success") == 0

def test_status_fault_on_one_operation(vendorguard):
    v, send = make()

    @v.guard("other")
    def other():
        return "fine"

    with vendorguard.inject("mail", vendorguard.status(503), operation="other"):
        assert send("a") == "sent"
        with pytest.raises(testing.InjectedStatus):
            other()
'''


def test_plugin_fixture_and_marker(pytester: pytest.Pytester) -> None:
    """Outage, fake clock, per-test isolation, the marker and per-operation faults all work
    inside a test suite that only asks for the ``vendorguard`` fixture."""
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


APP_SUITE = '''
import vendorguard as vg

# The application's vendor, made at import time as applications do.
mail = vg.Vendor("mail", retry=None, breaker=vg.Breaker(failures=2, reset_after=30.0))

@mail.guard("send", fallback="queued")
def send(to):
    return "sent"

def test_outage_opens_the_apps_breaker(vendorguard):
    with vendorguard.inject("mail", vendorguard.outage()):
        assert send("a") == "queued"
        assert send("b") == "queued"
    assert vendorguard.state("mail") == "open"
    assert vendorguard.calls("mail", "error") == 2
    assert vendorguard.fallbacks("mail") == 2

def test_next_test_starts_closed_and_counts_from_zero(vendorguard):
    assert vendorguard.state("mail") == "closed"
    assert vendorguard.calls("mail") == 0
    assert send("c") == "sent"
    assert vendorguard.calls("mail", "success") == 1

def test_vendors_made_in_a_test_are_removed_after_it(vendorguard):
    vg.Vendor("temporary")

def test_the_same_name_can_be_made_again(vendorguard):
    vg.Vendor("temporary")
    assert vg.vendor("mail") is mail
'''


def test_vendors_made_at_import_time(pytester: pytest.Pytester) -> None:
    """The application's own vendors, made when its modules are imported, are watched by the
    fixture (counted from zero in each test) and start every test with a closed breaker."""
    pytester.makepyfile(test_app=APP_SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_marker_needs_vendor_names(pytester: pytest.Pytester) -> None:
    """A bare ``vendor_outage`` marker is a usage error, not a silent no-op."""
    pytester.makepyfile(test_bad="""
import pytest

@pytest.mark.vendor_outage()
def test_nothing():
    pass
""")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*vendor_outage needs vendor names*"])


def test_plugin_is_registered_by_its_entry_point(pytester: pytest.Pytester) -> None:
    """In a fresh pytest process the installed package provides the fixture and the marker
    (``--strict-markers`` accepts it) with no conftest at all."""
    pytester.makepyfile(test_entry="""
import pytest

@pytest.mark.vendor_outage("x")
def test_fixture(vendorguard):
    assert vendorguard.calls("x") == 0
""")
    result = pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
