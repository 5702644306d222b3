"""Tests of the vendor drop-ins against the real vendor SDKs and local fakes."""
