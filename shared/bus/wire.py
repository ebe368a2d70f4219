"""A faster NATS header codec for nats-py: same bytes on the wire, about a fifth of the CPU.

nats-py encodes a message's headers key by key (a regex ``fullmatch``, ``strip`` and ``translate`` per header)
and parses them line by line with a per-character whitespace scan of every key. With the seven headers every
Switchboard message carries that is ~10 µs to send and ~7 µs to receive per message, on the audio path 50
times a second per call and direction. :class:`SwitchboardClient` keeps nats-py's exact rules — the NATS
header block ``NATS/1.0\\r\\n`` + ``Name: Value\\r\\n``… + ``\\r\\n`` (ADR-4,
https://github.com/nats-io/nats-architecture-and-design/blob/main/adr/ADR-4.md) — and caches what repeats:
a key is validated and encoded once, a value is only rewritten when it holds a CR or LF, and a received key
is checked once per distinct spelling.

It also keeps a ``flush`` behind everything queued before it. nats-py 2.16's ``_send_ping`` writes ``PING``
straight to the socket while an earlier ``SUB`` still waits in the pending buffer for the flusher task, so the
server can answer ``PONG`` before it has the subscription: ``subscribe`` + ``flush`` returned, and a message
published right then from another connection was not delivered (2–8 in 100 new subscriptions here; a raw
socket client sending ``SUB`` then ``PING`` missed none in 200). :meth:`SwitchboardClient._send_ping` queues the
``PING`` behind the pending commands instead, which is what a flush promises: once the PONG is back, the
server has processed everything sent before it (NATS docs, "Caches, Flush and Ping",
https://docs.nats.io/developing-with-nats/sending/caches).

And it can hand one subscription's messages to a plain function straight from the read loop
(:meth:`SwitchboardClient.add_inline_handler`): nats-py otherwise builds a ``Msg``, queues it and switches to the
subscription's task for each one. The JetStream ack tracker (:mod:`shared.bus.acks`) uses it: one ack per logged
event.

Core messages whose header block is plain (``NATS/1.0\r\n`` + lines, no inline status) on ordinary
subscriptions are delivered by a leaner copy of nats-py 2.16's ``_process_msg`` (:data:`FAST_DELIVERY`): the same
stats, header dict, ``Msg``, pending-bytes limit and queue, without its extra coroutines and JetStream branches
(~1–2 µs of 8–10 per message in a loop over ``_process_msg``). JetStream push subscriptions, old-style
requests, auto-unsubscribe and status messages keep nats-py's own path;
``test_fast_delivery_gives_the_messages_nats_py_gives`` compares both clients on the same messages.

``tests/unit/test_wire.py`` checks, for arbitrary header sets, that the bytes sent and the dict received are
identical to nats-py's own implementation (so an upgrade of nats-py that changes the rules fails there). The
override is only active on the nats-py minor versions listed in :data:`TESTED_NATS_PY`; on any other the
client is plain nats-py (slower, never wrong) and a warning says so.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
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

__all__ = ["FAST_CODEC", "INLINE_HANDLERS", "ORDERED_PING", "TESTED_NATS_PY", "InlineHandler", "SwitchboardClient",
           "encode_headers", "parse_header_lines"]

log = logging.getLogger(__name__)

InlineHandler = Callable[[bytes, bytes, bytes | None], None]
"""``handler(subject, data, raw_headers)`` run in the read loop (raw_headers: the ``NATS/1.0…`` block or None)."""

TESTED_NATS_PY = ("2.16",)
"""nats-py minor versions whose private ``_send_publish`` / ``_parse_header_lines`` this codec matches."""


def _nats_py_minor() -> str:
    try:
        return ".".join(version("nats-py").split(".")[:2])
    except PackageNotFoundError:  # pragma: no cover - nats-py is a declared dependency
        return "unknown"


_TESTED = _nats_py_minor() in TESTED_NATS_PY

ORDERED_PING = _TESTED
"""Whether :class:`SwitchboardClient` queues ``PING`` behind pending commands (checked on these versions)."""
INLINE_HANDLERS = _TESTED
"""Whether :meth:`SwitchboardClient.add_inline_handler` is active (``_process_msg`` checked on these versions)."""

FAST_CODEC = _RULES_FOUND and _TESTED
"""Whether :class:`SwitchboardClient` uses this module's codec (else it is nats-py's client unchanged)."""
FAST_DELIVERY = FAST_CODEC
"""Whether core messages with plain headers skip nats-py's generic ``_process_msg`` (same Msg, same queue; the
header dict comes from this module's parser, so it goes with the codec)."""
_PLAIN_HEADER_LINE = b"NATS/1.0\r\n"
"""A header block with no inline status starts with exactly this (ADR-4); anything else takes nats-py's path."""
if not FAST_CODEC:
    log.warning("nats-py %s is not among the versions the fast header codec was checked against (%s): "
                "using nats-py's own codec", _nats_py_minor(), ", ".join(TESTED_NATS_PY))

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


class SwitchboardClient(_NatsClient):
    """nats-py's client with :func:`encode_headers` / :func:`parse_header_lines` as its header codec, and a
    ``flush`` that cannot overtake an earlier ``SUB`` (see the module docstring).

    Everything else (connection, flushing, stats, errors) is nats-py's. Create it and call ``connect`` as
    with ``nats.aio.client.Client``.
    """

    _inline: dict[int, InlineHandler] | None = None

    def add_inline_handler(self, sid: int, handler: InlineHandler) -> bool:
        """Have ``handler(subject, data, raw_headers)`` called for subscription ``sid``'s messages straight from
        the read loop: no ``Msg`` object, no queue and no task switch (for tiny handlers that never block,
        like JetStream ack bookkeeping). Returns False (nothing done) when nats-py's version is not one this
        was checked against; the caller then keeps a normal callback subscription.
        """
        if not INLINE_HANDLERS:
            return False
        if self._inline is None:
            self._inline = {}
        self._inline[sid] = handler
        return True

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                           headers: bytes | None) -> None:
        inline = self._inline
        if inline is not None:
            handler = inline.get(sid)
            if handler is not None:
                stats = self.stats
                stats["in_msgs"] += 1
                stats["in_bytes"] += len(data)
                try:
                    handler(subject, data, headers)
                except Exception:
                    log.exception("inline handler for subscription %d failed", sid)
                return
        sub = self._subs.get(sid) if FAST_DELIVERY else None
        if (sub is None or sub._jsi is not None or sub._future is not None or sub._max_msgs > 0
                or (headers is not None and not headers.startswith(_PLAIN_HEADER_LINE))):
            # JetStream, old-style requests, auto-unsubscribe, status headers, unknown sid: nats-py's own path
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]  # None: none
            return
        # a core message with plain headers, delivered exactly as nats-py 2.16's _process_msg does (stats, the
        # header dict, the Msg, the pending-bytes limit, the queue) minus its extra coroutines and checks
        size = len(data)
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += size
        sub._received += 1
        hdr: dict[str, str] | None = None
        if headers is not None and len(headers) > len(_PLAIN_HEADER_LINE):
            hdr = parse_header_lines(headers[len(_PLAIN_HEADER_LINE):]) or None
        msg = self.msg_class(subject=subject.decode(), reply=reply.decode(), data=data, headers=hdr,
                             _client=self, _sid=sid)
        sub._pending_size += size
        if sub._pending_bytes_limit <= 0 or sub._pending_size < sub._pending_bytes_limit:
            try:
                sub._pending_queue.put_nowait(msg)
                return
            except asyncio.QueueFull:
                pass
        # over the pending bytes or messages limit: dropped and reported, as nats-py does
        sub._pending_size -= size
        await self._error_cb(errors.SlowConsumerError(subject=msg.subject, reply=msg.reply, sid=sid, sub=sub))

    async def _send_ping(self, future: asyncio.Future[Any] | None = None) -> None:
        """Send ``PING`` after every command already queued (nats-py writes it ahead of them)."""
        if not ORDERED_PING:
            await super()._send_ping(future)
            return
        self._pongs.append(future if future is not None else asyncio.get_running_loop().create_future())
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
