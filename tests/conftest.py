"""Shared fixtures: a clean vendor registry and a private metrics registry per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from vendorguard import registry as _registry

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    _registry.clear()
    yield
    _registry.clear()


@pytest.fixture
def metrics() -> CollectorRegistry:
    """A fresh Prometheus registry, so counts start at zero in every test."""
    return CollectorRegistry()


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    """The value of one sample (0.0 when the series does not exist)."""
    value = reg.get_sample_value(name, labels)
    return 0.0 if value is None else value
