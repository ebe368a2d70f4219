"""The caller simulator (``switchboard call``): a Twilio-faithful client that speaks a scenario's lines.

Public API: :func:`run_scenario` → :class:`CallResult`; parts in :mod:`.client` (Media Streams socket),
:mod:`.playback` (20 ms playback clock and marks), :mod:`.recording` (stereo WAV), :mod:`.follower` (the call
on the bus, turn ends) and :mod:`.simulator`.
"""

from switchboard.caller.simulator import CallerSimulator, CallResult, run_scenario

__all__ = ["CallResult", "CallerSimulator", "run_scenario"]
