"""A faster NATS header codec for nats-py: same bytes on the wire, about a fifth of the CPU.

nats-py encodes a message's headers key by key (a regex ``fullmatch``, ``strip`` and ``translate`` per header)
and parses them line by line with a per-character whitespace scan of every key. With the seven headers every
Switchboard message carries that is a large share of a message's cost, on the audio path 50 times a second per
call and direction (``bench/bus.py`` measures the bus against raw nats-py). :class:`SwitchboardClient` keeps
nats-py's exact rules — the NATS
header block ``NATS/1.0\\r\\n`` + ``Name: Value\\r\\n``… + ``\\r\\n`` (ADR-4,
https://github.com/nats-io/nats-architecture-and-design/blob/main/adr/ADR-4.md) — and caches what repeats:
a key is validated and encoded once, a value is only rewritten when it holds a CR or LF, and a received key
is checked once per distinct spelling.

It also keeps a ``flush`` behind everything queued before it, on every nats-py version (it fixes message loss,
so it is not tied to the codec's version check). nats-py 2.16's ``_send_ping`` writes ``PING`` straight to the
socket while an earlier ``SUB`` still waits in the pending buffer for the flusher task, so the server can answer
``PONG`` before it has the subscription: ``subscribe`` + ``flush`` returned, and a message published right then
from another connection was not delivered (2–8 in 100 new subscriptions here; a raw socket client sending
``SUB`` then ``PING`` missed none in 200). :meth:`SwitchboardClient._send_ping` queues the ``PING`` behind the
pending commands instead, which is what a flush promises: once the PONG is back, the server has processed
everything sent before it (NATS docs, "Caches, Flush and Ping",
https://docs.nats.io/developing-with-nats/sending/caches).

And a flush cannot be broken by its caller's cancellation (:func:`flush_shielded`, also used by
:meth:`SwitchboardClient.flush`). nats-py's ``flush`` waits for its PONG future with ``asyncio.wait_for``; a
cancelled caller cancels that future, the PONG then arrives, ``_process_pong`` calls ``set_result`` on the
cancelled future and the ``InvalidStateError`` ends the connection's read loop: the client still reports
itself connected but reads nothing until its stale-connection check reconnects (same family as
https://github.com/nats-io/nats.py/issues/624). Shielded, the flush runs to its PONG whatever the caller does.

``tests/unit/test_wire.py`` checks, for arbitrary header sets, that the bytes sent and the dict received are
identical to nats-py's own implementation (so an upgrade of nats-py that changes the rules fails there). The
codec is only active on the nats-py minor versions listed in :data:`TESTED_NATS_PY` (``pyproject.toml`` pins
nats-py to them; ``tests/unit/test_nats_pin.py`` fails on any other); on another version the codec is nats-py's
own (slower, never wrong) and a warning says so.
"""

from __future__ import annotations

import asyncio
import logging
import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from nats import errors
from nats.aio.client import PING_PROTO
from nats.aio.client import Client as _NatsClient
from nats.protocol import command as prot_command

try:  # nats-py's own rules, so both codecs agree; absent from a nats-py we do not know: fast path off
    from nats.aio.client import _HEADER_KEY_RE, _HEADER_VALUE_NEWLINES
    _RULES_FOUND = True
except ImportError:  # pragma: no cover - depends on the nats-py release
    _HEADER_KEY_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 7230 token
    _HEADER_VALUE_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
    _RULES_FOUND = False

__all__ = ["DEFAULT_FLUSH_TIMEOUT", "FAST_CODEC", "TESTED_NATS_PY", "SwitchboardClient", "encode_headers",
           "flush_shielded", "nats_py_minor", "parse_header_lines"]

log = logging.getLogger(__name__)

TESTED_NATS_PY = ("2.16",)
"""nats-py minor versions whose private ``_send_publish`` / ``_parse_header_lines`` this codec matches."""


def nats_py_minor() -> str:
    """The installed nats-py's ``major.minor`` (``"2.16"``), or ``"unknown"``."""
    try:
        return ".".join(version("nats-py").split(".")[:2])
    except PackageNotFoundError:  # pragma: no cover - nats-py is a declared dependency
        return "unknown"


FAST_CODEC = _RULES_FOUND and nats_py_minor() in TESTED_NATS_PY
"""Whether :class:`SwitchboardClient` uses this module's codec (else nats-py's own)."""
DEFAULT_FLUSH_TIMEOUT = 10.0
"""Seconds :func:`flush_shielded` waits for the server's PONG by default (nats-py's ``flush`` default)."""
if not FAST_CODEC:
    log.warning("nats-py %s is not among the versions the fast header codec was checked against (%s): "
                "using nats-py's own codec", nats_py_minor(), ", ".join(TESTED_NATS_PY))

_KEY_CACHE_SIZE = 1024
"""Distinct header keys remembered by the encoder and by the parser each (cleared when full)."""

_encoded_keys: dict[str, str | None] = {}
"""A header key as given → ``"Key: "`` (stripped, validated) or None for a blank key (skipped)."""
_parsed_keys: dict[bytes, str | None] = {}
"""A received header name (bytes before ``:``) → the key as nats-py reports it, or None (line skipped)."""


def _encoded_key(key: str) -> str | None:
    prefix = _encoded_keys.get(key, "")
    if prefix != "":
        return prefix
    stripped = key.strip()
    if not stripped:
        prefix = None
    elif not _HEADER_KEY_RE.fullmatch(stripped):
        raise errors.BadHeaderError(stripped)
    else:
        prefix = stripped + ": "
    if len(_encoded_keys) >= _KEY_CACHE_SIZE:
        _encoded_keys.clear()
    _encoded_keys[key] = prefix
    return prefix


def encode_headers(headers: dict[str, Any]) -> bytes:
    """The NATS header block for ``headers``, byte-identical to nats-py's ``_send_publish``.

    Keys are stripped and must be RFC 7230 tokens (blank keys are skipped); values are stripped and CR/LF
    inside them become spaces.

    Raises:
        nats.errors.BadHeaderError: a key is not a valid header name.
    """
    parts = ["NATS/1.0\r\n"]
    for key, value in headers.items():
        prefix = _encoded_key(key)
        if prefix is None:
            continue
        value = value.strip()
        if "\r" in value or "\n" in value:
            value = value.translate(_HEADER_VALUE_NEWLINES)
        parts.append(prefix)
        parts.append(value)
        parts.append("\r\n")
    parts.append("\r\n")
    return "".join(parts).encode()


def _parsed_key(name: bytes) -> str | None:
    if name in _parsed_keys:
        return _parsed_keys[name]
    key: str | None
    try:
        key = name.strip().decode("ascii")
    except UnicodeDecodeError:
        key = None
    if key is not None and any(c.isspace() for c in key):
        key = None
    if len(_parsed_keys) >= _KEY_CACHE_SIZE:
        _parsed_keys.clear()
    _parsed_keys[name] = key
    return key


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """Parse header lines (``Name: Value\\r\\n``…) exactly as nats-py's ``Client._parse_header_lines``.

    Lines without ``:`` and names that are not ASCII or contain whitespace are skipped; values are stripped
    and decoded as UTF-8 with replacement. Never raises.
    """
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = _parsed_key(name)
        if key is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    return out


async def flush_shielded(nc: _NatsClient, timeout: float = DEFAULT_FLUSH_TIMEOUT) -> None:
    """``nc.flush(timeout)`` (PING, wait for PONG) that the caller's cancellation cannot break.

    The flush runs in its own task: cancelling the caller cancels only the wait, the flush still receives
    its PONG (see the module docstring for what an unshielded cancel does to nats-py's read loop).

    Raises:
        nats.errors.FlushTimeoutError: no PONG within ``timeout`` seconds.
        nats.errors.ConnectionClosedError: the connection is closed.
        asyncio.CancelledError: the caller was cancelled (the flush itself carries on).
    """
    task = asyncio.ensure_future(_NatsClient.flush(nc, timeout))  # type: ignore[arg-type]  # seconds (annotated int)
    task.add_done_callback(_retrieve)
    await asyncio.shield(task)


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a shielded flush's outcome as seen (its caller may be gone)."""
    if not task.cancelled():
        task.exception()


class SwitchboardClient(_NatsClient):
    """nats-py's client with :func:`encode_headers` / :func:`parse_header_lines` as its header codec, a
    ``flush`` that cannot overtake an earlier ``SUB`` and cannot be broken by a cancelled caller (see the
    module docstring).

    Everything else (connection, flushing, stats, errors) is nats-py's. Create it and call ``connect`` as
    with ``nats.aio.client.Client``.
    """

    async def flush(self, timeout: int = 10) -> None:
        """nats-py's ``flush`` run through :func:`flush_shielded` (also for nats-py's own callers)."""
        await flush_shielded(self, timeout)

    async def _send_ping(self, future: asyncio.Future[Any] | None = None) -> None:
        """Send ``PING`` after every command already queued (nats-py writes it ahead of them).

        The future nats-py resolves when the ``PONG`` arrives is one of ours that nobody cancels; it passes the
        result on to ``future`` unless that one is already done. nats-py's ``flush`` cancels its future when its
        timeout fires (a server paused past the timeout), and ``_process_pong`` calls ``set_result`` on whatever
        it pops: on the cancelled future the late ``PONG`` raised ``InvalidStateError`` and ended the read loop.
        """
        pong: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if future is not None:
            caller = future

            def pass_on(_: asyncio.Future[Any]) -> None:
                if not caller.done():
                    caller.set_result(True)

            pong.add_done_callback(pass_on)
        self._pongs.append(pong)
        await self._send_command(PING_PROTO)
        await self._flush_pending()

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        if not FAST_CODEC:
            parsed: dict[str, str] = _NatsClient._parse_header_lines(raw)
            return parsed
        return parse_header_lines(raw)

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, Any] | None,
    ) -> None:
        if headers is None or not FAST_CODEC:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        if subject == "":
            raise errors.BadSubjectError
        pub_cmd = prot_command.hpub_cmd(subject, reply, encode_headers(headers), payload)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(pub_cmd)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()
