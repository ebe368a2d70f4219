"""Where one session instance's view of a call's log stands: the ``Switchboard-Seq`` it continues and the caller
audio the log shows appended to the model.

The position feeds the call's ownership entry (:class:`~services.session.ownership.LogMark`, renewed with each
heartbeat, so a peer taking over after a crash reads only the log's tail) and, after a takeover, the replay offset
of the caller audio the gateway kept (:meth:`services.session.callerin.CallerInput.replay_offset`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from .ownership import LogMark, Owner
from .rebuild import CallLog

__all__ = ["LogPosition"]


class LogPosition:
    """The log position of one call as this instance knows it.

    Args:
        taken_over: the call was taken over from another instance: the audio already appended is unknown until
            the rebuild counted the log's (:meth:`counted`).
    """

    def __init__(self, *, taken_over: bool) -> None:
        self.appended_in_log = 0
        """Caller audio bytes the log shows appended (read by a rebuild; the replay offset after a takeover)."""
        self.lapsed_owner: Owner | None = None
        """After a lapse: the crashed owner's last ownership entry (its mark limits the reads to the log's tail)."""
        self.prefetched: CallLog | None = None
        """After a lapse: the call's log, read while the model connected (used by the first rebuild)."""
        self.seq_resumed = False
        """Set once ``Switchboard-Seq`` continues the log's (from then on the bus's seq for the call is exact)."""
        self.appended: tuple[int, int] | None = None if taken_over else (0, 0)
        """(seq of the last caller-audio append logged, caller audio bytes appended over the call up to it); after
        a takeover None until :meth:`counted`."""

    def note_append(self, seq: int | None, nbytes: int) -> None:
        """This instance logged an ``input_audio_buffer.append`` of ``nbytes`` bytes at ``seq``."""
        if self.appended is not None and seq is not None:
            self.appended = (seq, self.appended[1] + nbytes)

    def counted(self, current_seq: int, appended_bytes: int) -> None:
        """A rebuild counted ``appended_bytes`` of caller audio in the log, which stands at ``current_seq``."""
        self.appended_in_log = appended_bytes
        if self.appended is None:  # taken over: our own appends count on from the log's
            self.appended = (current_seq, appended_bytes)

    def mark(self, current_seq: int) -> LogMark | None:
        """The mark for the call's ownership entry, read now; None until the seq continues the log's (a peer
        taking over after a crash then reads the whole log)."""
        if not self.seq_resumed:
            return None
        return LogMark(current_seq, datetime.now(UTC), self.appended)
