"""The demo's script: five phases of equal length, and its clock.

Outages add up: SendGrid hangs first, then LaunchDarkly's stream drops too, then Stripe starts
rate-limiting, and in the last phase everything recovers at once. ``--speed`` plays the timeline
faster; :class:`Pace` scales every duration of the demo with it (phase lengths, vendor timeouts,
backoffs, breaker reset times, Retry-After), each with a floor below which loopback timings and
thread scheduling would start to decide the outcome instead of the policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fakes import FakeLaunchDarkly, FakeSendGrid, FakeStripe

__all__ = ["TIMELINE", "Pace", "Phase", "apply"]


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase of the timeline: what each stand-in vendor does during it."""

    name: str
    sendgrid_hangs: bool = False
    launchdarkly_down: bool = False
    stripe_limited: bool = False


TIMELINE: tuple[Phase, ...] = (
    Phase("healthy"),
    Phase("SendGrid hangs", sendgrid_hangs=True),
    Phase("LaunchDarkly stream drops", sendgrid_hangs=True, launchdarkly_down=True),
    Phase("Stripe answers 429 + Retry-After", sendgrid_hangs=True, launchdarkly_down=True,
          stripe_limited=True),
    Phase("everything recovers"),
)


def apply(phase: Phase, sendgrid: FakeSendGrid, launchdarkly: FakeLaunchDarkly,
          stripe: FakeStripe) -> None:
    """Make the stand-ins behave as ``phase`` says."""
    if phase.sendgrid_hangs:
        sendgrid.hang()
    else:
        sendgrid.recover()
    if phase.launchdarkly_down:
        launchdarkly.drop()
    else:
        launchdarkly.recover()
    if phase.stripe_limited:
        stripe.limit()
    else:
        stripe.recover()


@dataclass(frozen=True, slots=True)
class Pace:
    """The timeline's length (timeline seconds) and how much faster than real time it plays."""

    duration: float = 60.0
    speed: float = 1.0

    def __post_init__(self) -> None:
        if not (self.duration > 0 and self.speed > 0):
            raise ValueError(f"duration and speed must be > 0, got {self.duration!r}, "
                             f"{self.speed!r}")

    def wall(self, seconds: float, floor: float = 0.0) -> float:
        """Real seconds for ``seconds`` of timeline time, never below ``floor``."""
        return max(seconds / self.speed, floor)

    @property
    def phase_seconds(self) -> float:
        """Real seconds each phase lasts."""
        return self.duration / len(TIMELINE) / self.speed

    @property
    def wall_seconds(self) -> float:
        """Real seconds the whole timeline lasts."""
        return self.duration / self.speed

    def timeline_time(self, elapsed: float) -> float:
        """Timeline seconds for ``elapsed`` real seconds."""
        return min(elapsed * self.speed, self.duration)
