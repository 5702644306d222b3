"""LaunchDarkly feature flags through the vendorguard drop-in, with no network needed.

Run it with ``python examples/launchdarkly_flags.py`` (needs ``launchdarkly-server-sdk``).
Flags come from the SDK's own in-memory ``TestData`` source instead of LaunchDarkly; the only
change an application makes is the import line of ``LDClient``.
"""

from __future__ import annotations

from ldclient import Config, Context
from ldclient.integrations.test_data import TestData
from prometheus_client import CollectorRegistry, generate_latest
from vendorguard.integrations.launchdarkly import LDClient  # was: from ldclient import LDClient

import vendorguard as vg

registry = CollectorRegistry()

# Stand-in for LaunchDarkly: two flags, one targeted at a single user.
flags = TestData.data_source()
flags.update(flags.flag("new-checkout").variation_for_key("user", "ada", True)
             .fallthrough_variation(False))
flags.update(flags.flag("banner-color").variations("blue", "green").variation_for_all(1))


def main() -> None:
    config = Config("sdk-example", update_processor_class=flags, send_events=False,
                    diagnostic_opt_out=True)
    client = LDClient(config, registry=registry)  # same arguments as ldclient.LDClient
    try:
        ada, bob = Context.create("ada"), Context.create("bob")
        print(f"new-checkout for ada   -> {client.variation('new-checkout', ada, False)}")
        print(f"new-checkout for bob   -> {client.variation('new-checkout', bob, False)}")
        print(f"banner-color for bob   -> {client.variation('banner-color', bob, 'blue')}")
        # The plain SDK raises AttributeError here; the drop-in serves the default.
        print(f"bad context (a dict)   -> {client.variation('new-checkout', {'key': 'x'}, False)}")
        print(f"unknown flag           -> {client.variation('no-such-flag', ada, 'off')}")

        entry = vg.health()["vendors"]["launchdarkly"]
        source = entry["data_source"]
        print(f"\nhealth: launchdarkly {entry['status']} (flags loaded: {source['initialized']}, "
              f"data age {source['age_seconds']:g} s)")
        print("\nmetrics:")
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith(("vendorguard_calls_total", "vendorguard_fallbacks_total",
                                "vendorguard_flag_data_age")) and not line.endswith(" 0.0"):
                print(f"  {line}")
    finally:
        client.close()


if __name__ == "__main__":
    main()
