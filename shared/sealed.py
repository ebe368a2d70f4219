"""Keypad entries sealed for one tool: AES-256-GCM under ``SWITCHBOARD_CAPTURE_KEY``, bound to call and tool.

A keypad capture (docs/compliance.md, "Keypad capture") hands the digits to a tool over ``tools.<name>`` — a core
NATS request any holder of ``tools.>`` could read — so the session seals them and only the tool opens them. The
key is 32 random bytes, hex (``switchboard up`` generates it into the data dir; on Kubernetes a Secret shared by
the session and the tool worker). Associated data ``<call id>|<tool>`` binds a sealed value to its call and
tool: replayed into another call or tool it does not open.

Format: ``base64url(nonce ‖ ciphertext ‖ tag)`` with a fresh 96-bit random nonce per seal (NIST SP 800-38D §8.2.2;
https://cryptography.io/en/latest/hazmat/primitives/aead/#cryptography.hazmat.primitives.ciphers.aead.AESGCM).
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["SealError", "open_sealed", "parse_key", "seal"]

_NONCE_BYTES = 12


class SealError(ValueError):
    """A key that is not 32 bytes of hex, or a sealed value that is malformed or does not open."""


def parse_key(key_hex: str) -> bytes:
    """The 32-byte key from its hex form.

    Raises:
        SealError: not hex, or not 32 bytes.
    """
    try:
        key = bytes.fromhex(key_hex.strip())
    except ValueError:
        raise SealError("the capture key must be hex") from None
    if len(key) != 32:
        raise SealError(f"the capture key must be 32 bytes (64 hex digits), got {len(key)}")
    return key


def _aad(call_id: str, tool: str) -> bytes:
    return f"{call_id}|{tool}".encode()


def seal(key_hex: str, plaintext: str, *, call_id: str, tool: str) -> str:
    """Seal ``plaintext`` for ``tool`` on ``call_id``; returns the base64url token.

    Raises:
        SealError: a bad key.
    """
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(parse_key(key_hex)).encrypt(nonce, plaintext.encode(), _aad(call_id, tool))
    return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def open_sealed(key_hex: str, token: str, *, call_id: str, tool: str) -> str:
    """Open a token made by :func:`seal` for the same call and tool.

    Raises:
        SealError: a bad key, a malformed token, another key, call or tool, or a tampered token.
    """
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SealError("the sealed value is not base64url") from None
    if len(raw) <= _NONCE_BYTES + 16:
        raise SealError("the sealed value is too short")
    try:
        plain = AESGCM(parse_key(key_hex)).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(call_id, tool))
    except InvalidTag:
        raise SealError("the sealed value does not open with this key for this call and tool") from None
    return plain.decode()
