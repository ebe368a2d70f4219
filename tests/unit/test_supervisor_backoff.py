"""The supervisor's restart backoff doubles while a child keeps dying and starts over after 60 s of health."""

from __future__ import annotations

from switchboard.supervisor import HEALTHY_RESET_S, Backoff


def test_backoff_doubles_to_the_cap_and_resets_after_a_minute_of_health() -> None:
    backoff = Backoff()
    assert backoff.reset_after == HEALTHY_RESET_S == 60.0
    assert [backoff.delay(0.0) for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(59.9) == 30.0  # ready, but not for a minute: no reset
    assert backoff.delay(60.0) == 0.5  # a minute of health: back to the start
    assert backoff.delay(0.0) == 1.0
