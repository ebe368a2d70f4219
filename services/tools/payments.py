"""The demo payment tool: ``take_payment`` receives a card number captured on the keypad (docs/compliance.md,
"Keypad capture") and answers with a token and the last four digits only.

The session never sends the digits in clear: ``arguments`` are ``{"kind": "card", "length": N, "sealed": …}``
where ``sealed`` is the number sealed for this tool and call (:mod:`shared.sealed`, ``SWITCHBOARD_CAPTURE_KEY``).
The tool opens it, checks the Luhn checksum (ISO/IEC 7812-1 annex B) and the length (12–19 digits), and returns
``{"status": "approved", "token": "tok_…", "last4": "1111", "brand": …, "message": …}``. The token is an HMAC of
the number under the capture key, so the same card gives the same token and the number cannot be recovered from
it. Nothing is stored: a real deployment hands the number to its payment provider here. Errors (400, safe to
speak): the checksum fails, the length is wrong, or the value does not open (wrong key, call or tool).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from services.tools.framework import InvalidArguments, ToolContext, tool
from shared.redact import luhn_valid
from shared.sealed import SealError, open_sealed, parse_key

__all__ = ["card_brand", "luhn_valid", "take_payment"]


def card_brand(digits: str) -> str:
    """The card network by its leading digits (IIN ranges of the major networks); ``card`` when unknown."""
    if digits.startswith("4"):
        return "visa"
    if digits[:2] in ("51", "52", "53", "54", "55") or "2221" <= digits[:4] <= "2720":
        return "mastercard"
    if digits[:2] in ("34", "37"):
        return "amex"
    return "card"


@tool(idempotent=True, timeout_ms=5000, parameters={
    "type": "object", "additionalProperties": False, "required": ["kind", "sealed"],
    "properties": {"kind": {"type": "string", "enum": ["card"]},
                   "length": {"type": "integer", "minimum": 1, "maximum": 32},
                   "sealed": {"type": "string", "minLength": 1, "maxLength": 512}}})
async def take_payment(ctx: ToolContext, kind: str, sealed: str, length: int | None = None) -> dict[str, Any]:
    """Charge the card the caller typed on the keypad (only the session's keypad capture calls this)."""
    key = ctx.settings.capture_key
    if not key or not ctx.call.call_id:
        raise InvalidArguments("Card payments are not available right now.")
    try:
        digits = open_sealed(key, sealed, call_id=ctx.call.call_id, tool=ctx.tool)
    except SealError:
        raise InvalidArguments("The card number could not be read. Please type it again.") from None
    if not 12 <= len(digits) <= 19 or not digits.isdigit():
        raise InvalidArguments("That card number has the wrong number of digits. Please type it again.")
    if not luhn_valid(digits):
        raise InvalidArguments("That card number is not valid. Please check it and type it again.")
    token = "tok_" + hmac.new(parse_key(key), digits.encode(), hashlib.sha256).hexdigest()[:24]
    last4 = digits[-4:]
    return {"status": "approved", "token": token, "last4": last4, "brand": card_brand(digits),
            "message": f"The payment with the card ending in {' '.join(last4)} is approved."}
