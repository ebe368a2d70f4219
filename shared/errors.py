"""Switchboard's error hierarchy: what can cross the wire, and whether retrying may help.

Modelled on temporalio's serializable errors: a root :class:`SwitchboardError`; :class:`RetryableError`
(transient: a timeout, a broken connection) vs :class:`PermanentError` (bad input, not found, conflict).
At the NATS boundary an error travels as a nats.micro service error: the ``Nats-Service-Error-Code`` header
(400, 404, 409, 500, 504) and ``Nats-Service-Error`` (a message safe to speak to a caller) — never a
``repr()`` of an exception or a stack trace.
"""

from __future__ import annotations

__all__ = [
    "BusError",
    "PermanentError",
    "PublishFailedError",
    "RetryableError",
    "ServiceCallError",
    "SwitchboardError",
]


class SwitchboardError(Exception):
    """Root of every error Switchboard raises on purpose."""


class RetryableError(SwitchboardError):
    """A transient failure: the same request may succeed later."""


class PermanentError(SwitchboardError):
    """A failure that retrying cannot fix (bad input, missing record, conflict)."""


class BusError(RetryableError):
    """NATS could not be reached or did not answer in time."""


class PublishFailedError(BusError):
    """A JetStream publish was not acknowledged after every retry (the event is surfaced, not lost silently).

    Attributes:
        subject: the subject published to.
        msg_id: the ``Nats-Msg-Id`` used for every attempt.
        attempts: how many publishes were tried.
    """

    def __init__(self, subject: str, msg_id: str, attempts: int, cause: str) -> None:
        super().__init__(f"publish to {subject} (msg id {msg_id}) failed after {attempts} attempts: {cause}")
        self.subject = subject
        self.msg_id = msg_id
        self.attempts = attempts


class ServiceCallError(SwitchboardError):
    """A nats.micro service answered with an error, or did not answer.

    Attributes:
        code: the ``Nats-Service-Error-Code`` as an int (400 invalid arguments, 404 not found, 409 conflict,
            500 internal, 503 no responders, 504 deadline exceeded).
        message: the ``Nats-Service-Error`` description, safe to speak to a caller.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        """True for 500/503/504 (a retry with the same idempotency key may succeed)."""
        return self.code >= 500
