"""The stale-owner rule for what is derived from a call's log (issue 22): a message of an owner epoch below the
highest seen for the call is left out.

A session instance that owns a call stamps ``Switchboard-Epoch`` on everything it publishes for it
(:class:`shared.bus.Headers`, ``services/session/ownership.py``); after a handover or a takeover the previous
owner may still publish a little (its model was mid-response). The gateway drops that audio and those commands
(``services/gateway/call.py``, ``_current``), so the caller never heard them; the recorder keeps them in the
archive (the log is complete) but a projection of what the caller heard — the recording — must drop them too.
During a handover both owners append the same live caller audio until the old one stops: the recording and a
later takeover's replay offset (``services/session/rebuild.py``) count each append once, the current owner's.
"""

from __future__ import annotations

from shared.bus import Headers

__all__ = ["OwnerFence"]


class OwnerFence:
    """The highest owner epoch seen so far for one call, fed its events in time order.

    A message without ``Switchboard-Epoch`` (the gateway's, or a session before ownership) is always current;
    a malformed value counts as epoch 0, as on the gateway.
    """

    def __init__(self) -> None:
        self.epoch = 0
        """The highest epoch seen (0: none yet)."""
        self.ignored = 0
        """Messages :meth:`current` turned away."""

    def current(self, headers: dict[str, str]) -> bool:
        """False for a message of a stale owner epoch (below :attr:`epoch`); a higher epoch becomes current."""
        value = headers.get(Headers.EPOCH)
        if value is None:
            return True
        epoch = int(value) if value.isdigit() else 0
        if epoch < self.epoch:
            self.ignored += 1
            return False
        self.epoch = epoch
        return True
