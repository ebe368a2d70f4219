"""Keypad capture without I/O: sealing for one tool and call, the Luhn check and masks, and how the capture
collects digits (``*`` starts over, ``#`` submits early, ``length`` digits submit)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.session.agent import CaptureSpec
from services.session.capture import KeypadCapture, mask
from services.tools.framework import CallInfo
from services.tools.payments import card_brand, luhn_valid
from shared.contracts import Contract
from shared.sealed import SealError, open_sealed, parse_key, seal

KEY = secrets.token_hex(32)


def luhn_complete(body: str) -> str:
    """``body`` plus the check digit that makes it pass Luhn."""
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def test_sealed_values_open_only_for_their_call_and_tool() -> None:
    token = seal(KEY, "4111111111111111", call_id="call_a", tool="take_payment")
    assert "4111" not in token
    assert open_sealed(KEY, token, call_id="call_a", tool="take_payment") == "4111111111111111"
    for call_id, tool, key in (("call_b", "take_payment", KEY), ("call_a", "other", KEY),
                               ("call_a", "take_payment", secrets.token_hex(32))):
        with pytest.raises(SealError, match="does not open"):
            open_sealed(key, token, call_id=call_id, tool=tool)
    middle = len(token) // 2  # every bit of a middle base64 character counts (the last ones may be padding bits)
    tampered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1:]
    with pytest.raises(SealError):
        open_sealed(KEY, tampered, call_id="call_a", tool="take_payment")
    assert seal(KEY, "1", call_id="c", tool="t") != seal(KEY, "1", call_id="c", tool="t")  # fresh nonces
    for bad in ("zz", "00" * 16):
        with pytest.raises(SealError, match=r"hex|32 bytes"):
            parse_key(bad)
    with pytest.raises(SealError, match=r"base64|short"):
        open_sealed(KEY, "!!!", call_id="c", tool="t")


@given(st.text(alphabet="0123456789", min_size=11, max_size=18))
def test_luhn_accepts_exactly_one_check_digit(body: str) -> None:
    assert sum(luhn_valid(body + d) for d in "0123456789") == 1
    card = luhn_complete(body)
    assert mask("card", card) == "•" * (len(card) - 4) + card[-4:]
    assert card not in mask("card", card) and mask("digits", card) == "•" * len(card)


def test_known_numbers_and_brands() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("5555555555554444") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("4") and not luhn_valid("41x1")
    assert [card_brand(n) for n in ("4111", "5555", "2221", "3782", "6011")] == [
        "visa", "mastercard", "mastercard", "amex", "card"]


class Harness:
    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.published: list[dict[str, Any]] = []
        self.told: list[tuple[str, bool]] = []
        self.capture = KeypadCapture(bus=None, call=CallInfo("call_u", "+1555", "+1666", "payments"),  # type: ignore[arg-type]
                                     registry={}, key=None, command=self._command, publish=self._publish,
                                     tell=self._tell)

    async def _command(self, verb: str, command: Contract) -> None:
        self.commands.append((verb, command.encode()))

    async def _publish(self, subject: str, event: Contract) -> None:
        self.published.append(event.encode())

    async def _tell(self, text: str, tool: str, output: Any, ok: bool) -> None:
        self.told.append((text, ok))


async def test_digits_are_collected_reset_and_submitted_and_only_the_mask_leaves() -> None:
    h = Harness()
    await h.capture.press("1")  # not capturing: ignored
    spec = CaptureSpec(kind="card", length=16, tool="take_payment")
    await h.capture.apply("card", spec)
    assert h.commands == [("capture", {"active": True, "state": "card", "kind": "card"})]
    for d in "99*":
        await h.capture.press(d)
    for d in "4111111111111111":
        await h.capture.press(d)
    [record] = h.published
    assert record["digits"] == 16 and record["masked"] == "••••••••••••1111"
    assert record["ok"] is False and record["error_code"] == 503  # no key: refused, the model is told
    assert "4111111111111111" not in str(h.published) + str(h.told)
    await h.capture.press("#")  # nothing pending: no empty submission
    for d in "12#":
        await h.capture.press(d)
    assert h.published[1]["masked"] == "••" and h.published[1]["digits"] == 2
    await h.capture.apply("paid", None)
    assert h.commands[-1] == ("capture", {"active": False, "state": "paid"}) and not h.capture.active
