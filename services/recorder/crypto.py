"""Crypto-shredding of caller content in the archive: per-call data keys, AES-GCM field encryption, key wrapping.

Which fields are caller content is decided per event type (:data:`CONTENT_FIELDS`): audio, transcripts, text,
tool arguments and outputs, conversation items, the caller's and callee's numbers of ``call.<id>.started`` and
keypad digits. Everything else of an event (type, ids, timings, usage, marks) stays in clear, so timelines,
barge-ins and usage survive an erasure.

A content field's value is replaced by the string ``$enc:v1:`` + base64(nonce ‖ ciphertext ‖ tag):
AES-256-GCM (NIST SP 800-38D; ``cryptography``'s :class:`~cryptography.hazmat.primitives.ciphers.aead.AESGCM`)
over the value's JSON encoding, a random 96-bit nonce, and as associated data
``<call id>/<stream>/<stream seq>/<field path>``, so a ciphertext moved to another event or field does not
decrypt. A content-bearing body that is not a JSON object is sealed whole as ``{"$enc_body": "$enc:v1:…"}``.
The archive stores and hash-chains the sealed body, so destroying the call's data key leaves every chain intact.

Each call has its own 256-bit data key, stored only wrapped by a key-encryption key (:class:`Kms`):
:class:`LocalKms` wraps with AES-256-GCM under ``SWITCHBOARD_ARCHIVE_KEY`` (or ``<data dir>/auth/archive_key``,
created on first use), binding the wrapped key to its call id; an external KMS plugs in through the protocol.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "CONTENT_FIELDS",
    "ERASED",
    "PREFIX",
    "KeyUnavailable",
    "Kms",
    "LocalKms",
    "content_paths",
    "forget_contexts",
    "new_data_key",
    "open_body",
    "seal_body",
]

PREFIX = "$enc:v1:"
"""Start of every sealed field value."""
WHOLE_BODY = "$enc_body"
"""Key of the object that replaces a content-bearing body that is not a JSON object."""
ERASED = "[erased]"
"""What a sealed field reads as once the call's key is destroyed."""

_ITEM = (("item", "content"), ("item", "arguments"), ("item", "output"))
_PART = (("part", "text"), ("part", "audio"), ("part", "transcript"))
CONTENT_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    # Realtime client events (protocols.md §1; https://platform.openai.com/docs/api-reference/realtime-client-events)
    "input_audio_buffer.append": (("audio",),),
    "conversation.item.create": _ITEM,
    "response.create": (("response", "input"),),
    # Realtime server events (https://platform.openai.com/docs/api-reference/realtime-server-events)
    "conversation.item.added": _ITEM,
    "conversation.item.created": _ITEM,
    "conversation.item.done": _ITEM,
    "conversation.item.retrieved": _ITEM,
    "response.output_item.added": _ITEM,
    "response.output_item.done": _ITEM,
    "response.content_part.added": _PART,
    "response.content_part.done": _PART,
    "response.output_audio.delta": (("delta",),),
    "response.output_audio_transcript.delta": (("delta",),),
    "response.output_audio_transcript.done": (("transcript",),),
    "response.output_text.delta": (("delta",),),
    "response.output_text.done": (("text",),),
    "conversation.item.input_audio_transcription.delta": (("delta",),),
    "conversation.item.input_audio_transcription.completed": (("transcript",),),
    "response.function_call_arguments.delta": (("delta",),),
    "response.function_call_arguments.done": (("arguments",),),
    "response.done": (("response", "output"),),
    # CALLS (call.<id>.<type>): the parties' numbers and keypad digits
    "started": (("from",), ("to",)),
    "carrier.dtmf": (("digit",), ("digits",)),
    "command.dtmf": (("digits",),),  # digits the agent keys in for the caller (an account number, a PIN)
}
"""Event type → paths (keys from the body's root) of the fields holding caller content."""


class KeyUnavailable(Exception):
    """A call's data key cannot be had: never stored, destroyed, or wrapped under another key-encryption key.
    The message says which and names the call."""


class Kms(Protocol):
    """Wraps and unwraps per-call data keys with a key-encryption key held elsewhere (an external KMS plugs in
    here; :class:`LocalKms` is the local implementation)."""

    @property
    def key_id(self) -> str:
        """Identifies the key-encryption key in force (stored next to every wrapped key)."""
        ...

    async def wrap(self, call_id: str, data_key: bytes) -> bytes:
        """The 32-byte ``data_key`` of ``call_id`` wrapped (opaque bytes)."""
        ...

    async def unwrap(self, call_id: str, wrapped: bytes, key_id: str) -> bytes:
        """The data key of ``call_id`` from ``wrapped``; raises :class:`KeyUnavailable` when ``key_id`` is not
        this KMS's key or the wrapped key does not authenticate (another call's, or altered)."""
        ...


class LocalKms:
    """AES-256-GCM key wrapping under a local 32-byte key-encryption key (associated data: the call id).

    ``key_id`` is the first 16 hex digits of SHA-256 of the key. Build with :meth:`from_setting` or
    :meth:`from_file`.
    """

    def __init__(self, kek: bytes) -> None:
        if len(kek) != 32:
            raise ValueError(f"the archive key-encryption key must be 32 bytes, got {len(kek)}")
        self._aead = AESGCM(kek)
        self._key_id = hashlib.sha256(kek).hexdigest()[:16]

    @property
    def key_id(self) -> str:
        """First 16 hex digits of SHA-256 of the key-encryption key."""
        return self._key_id

    @classmethod
    def from_setting(cls, value: str) -> LocalKms:
        """From ``SWITCHBOARD_ARCHIVE_KEY``: 32 bytes as 64 hex digits or base64.

        Raises:
            ValueError: the value is neither, or not 32 bytes.
        """
        text = value.strip()
        try:
            raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            raise ValueError("SWITCHBOARD_ARCHIVE_KEY must be 32 bytes as 64 hex digits or base64") from None
        return cls(raw)

    @classmethod
    def from_file(cls, path: Path) -> LocalKms:
        """From ``path`` (64 hex digits); the file is created (mode 0600, exclusively) with a random key when it
        does not exist.

        Raises:
            ValueError: the file does not hold 64 hex digits.
        """
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process created it first: read theirs
            else:
                with os.fdopen(fd, "w") as file:
                    file.write(secrets.token_hex(32) + "\n")
        try:
            return cls(bytes.fromhex(path.read_text(encoding="ascii").strip()))
        except ValueError:
            raise ValueError(f"{path} must hold the archive key as 64 hex digits") from None

    async def wrap(self, call_id: str, data_key: bytes) -> bytes:
        """nonce (12 bytes) ‖ AES-GCM(data key), associated data the call id."""
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, data_key, call_id.encode())

    async def unwrap(self, call_id: str, wrapped: bytes, key_id: str) -> bytes:
        """The data key; raises :class:`KeyUnavailable` for another key-encryption key or a wrapped key that
        does not authenticate."""
        if key_id != self._key_id:
            raise KeyUnavailable(f"the data key of call {call_id} is wrapped under archive key {key_id}; the "
                                 f"configured archive key is {self._key_id} (SWITCHBOARD_ARCHIVE_KEY)")
        try:
            return self._aead.decrypt(wrapped[:12], wrapped[12:], call_id.encode())
        except InvalidTag:
            raise KeyUnavailable(f"the stored data key of call {call_id} does not authenticate under archive "
                                 f"key {key_id} (altered, or another call's)") from None


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return AESGCM.generate_key(bit_length=256)


def content_paths(event_type: str) -> tuple[tuple[str, ...], ...]:
    """The content field paths of ``event_type`` (empty: the event holds no caller content)."""
    return CONTENT_FIELDS.get(event_type, ())


@lru_cache(maxsize=4096)
def _aead(data_key: bytes) -> AESGCM:
    """The AES-GCM context of a data key (cached: the archive writer seals many events per call)."""
    return AESGCM(data_key)


def forget_contexts() -> None:
    """Drop every cached AES-GCM context, so no destroyed data key stays in this process's memory through it
    (called on erasure)."""
    _aead.cache_clear()


def _aad(call_id: str, stream: str, stream_seq: int, path: tuple[str, ...]) -> bytes:
    return f"{call_id}/{stream}/{stream_seq}/{'.'.join(path)}".encode()


def _seal(aead: AESGCM, value: Any, aad: bytes) -> str:
    nonce = secrets.token_bytes(12)
    sealed = nonce + aead.encrypt(nonce, orjson.dumps(value), aad)
    return PREFIX + base64.b64encode(sealed).decode()


def seal_body(data_key: bytes, call_id: str, stream: str, stream_seq: int, event_type: str, body: bytes) -> bytes:
    """``body`` with every content field of ``event_type`` sealed under ``data_key`` (returned unchanged when
    the type holds no content or none of its content fields is present). A content-bearing body that is not a
    JSON object is sealed whole."""
    paths = content_paths(event_type)
    if not paths:
        return body
    aead = _aead(data_key)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        if not body:
            return body
        whole = _seal(aead, base64.b64encode(body).decode(), _aad(call_id, stream, stream_seq, (WHOLE_BODY,)))
        return orjson.dumps({WHOLE_BODY: whole})
    changed = False
    for path in paths:
        parent: Any = parsed
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent and parent[path[-1]] is not None:
            parent[path[-1]] = _seal(aead, parent[path[-1]], _aad(call_id, stream, stream_seq, path))
            changed = True
    return orjson.dumps(parsed) if changed else body


def open_body(data_key: bytes | None, call_id: str, stream: str, stream_seq: int, event_type: str,
              body: bytes) -> bytes:
    """The inverse of :func:`seal_body` (the content fields of ``event_type`` are opened). With ``data_key``
    None (the call was erased) every sealed field reads
    :data:`ERASED` and a body sealed whole reads ``{"$enc_body": "[erased]"}``. Bodies without sealed fields
    (archived before encryption, or holding no content) are returned as they are.

    Raises:
        KeyUnavailable: a sealed field does not authenticate under ``data_key`` (wrong key, or altered).
    """
    if PREFIX.encode() not in body:
        return body
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(parsed, dict):
        return body
    aead = _aead(data_key) if data_key is not None else None

    def unseal(value: Any, path: tuple[str, ...]) -> Any:
        if not (isinstance(value, str) and value.startswith(PREFIX)):
            return value
        if aead is None:
            return ERASED
        raw = base64.b64decode(value[len(PREFIX):])
        try:
            return orjson.loads(aead.decrypt(raw[:12], raw[12:], _aad(call_id, stream, stream_seq, path)))
        except InvalidTag:
            raise KeyUnavailable(f"{stream} event {stream_seq} of call {call_id} does not decrypt with the call's "
                                 f"data key (field {'.'.join(path)})") from None

    if set(parsed) == {WHOLE_BODY}:
        value = unseal(parsed[WHOLE_BODY], (WHOLE_BODY,))
        return base64.b64decode(value) if aead is not None else orjson.dumps({WHOLE_BODY: ERASED})
    for path in content_paths(event_type):
        parent: Any = parsed
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent:
            parent[path[-1]] = unseal(parent[path[-1]], path)
    return orjson.dumps(parsed)
