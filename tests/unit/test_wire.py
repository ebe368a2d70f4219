"""shared.bus.wire: the header codec is byte-for-byte nats-py's, for any headers (hypothesis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats import errors
from nats.aio.client import Client

from shared.bus.wire import SwitchboardClient, encode_headers, parse_header_lines

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
keys = st.one_of(
    st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=20),
    st.sampled_from(["traceparent", " Nats-Msg-Id ", "Switchboard-Seq", "", "  "]),
    st.text(max_size=12),  # anything: spaces, colons, CR/LF, non-ASCII
)
values = st.one_of(st.text(max_size=40), st.sampled_from(["a\r\nb", " x ", "\n", "1234", "audio/pcmu"]))
header_sets = st.dictionaries(keys, values, max_size=8)


def _wire(client_cls: type[Client], headers: dict[str, Any]) -> bytes | type[Exception]:
    """The HPUB command ``client_cls`` queues for ``headers`` (or the exception class it raises)."""
    client = client_cls()
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)

    client._send_command = capture  # type: ignore[method-assign]
    try:
        asyncio.run(client._send_publish("call.CA1.audio.in", "", b"payload", 7, headers))
    except errors.Error as exc:
        return type(exc)
    assert client.stats["out_msgs"] == 1 and client.stats["out_bytes"] == 7
    return sent[0]


@settings(max_examples=300, deadline=None)
@given(header_sets)
def test_published_bytes_equal_nats_py(headers: dict[str, str]) -> None:
    assert _wire(SwitchboardClient, headers) == _wire(Client, headers)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=30), st.sampled_from([
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    b"Bad Key: x", b"NoColon", b"  Spaced  :  value  ", b"K:\xff\xfe", b"\xc3\xa9: accent", b"",
    b"Switchboard-Seq:12", b"Tab:\tv\t",
])), max_size=8))
def test_parsed_headers_equal_nats_py(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines) + b"\r\n\r\n"
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)
    assert parse_header_lines(raw) == parse_header_lines(raw)  # the key cache changes nothing


def test_a_typical_header_block() -> None:
    block = encode_headers({"Nats-Msg-Id": "CA1:gateway:7", "Switchboard-Seq": "7", "Note": "a\r\nb"})
    assert block == b"NATS/1.0\r\nNats-Msg-Id: CA1:gateway:7\r\nSwitchboard-Seq: 7\r\nNote: a  b\r\n\r\n"
    assert parse_header_lines(block[len(b"NATS/1.0\r\n"):]) == {
        "Nats-Msg-Id": "CA1:gateway:7", "Switchboard-Seq": "7", "Note": "a  b"}


def test_an_invalid_key_is_refused_as_nats_py_does() -> None:
    with pytest.raises(errors.BadHeaderError):
        encode_headers({"Bad Key": "x"})
    with pytest.raises(errors.BadHeaderError):  # and again, from the cache's point of view
        encode_headers({"Bad Key": "y"})


@settings(max_examples=50, deadline=None)
@given(header_sets)
def test_with_the_fast_codec_off_the_client_is_plain_nats_py(headers: dict[str, str]) -> None:
    from shared.bus import wire

    saved = wire.FAST_CODEC
    wire.FAST_CODEC = False
    try:
        assert _wire(SwitchboardClient, headers) == _wire(Client, headers)
        raw = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items() if "\r" not in k + v and "\n" not in k + v)
        assert SwitchboardClient._parse_header_lines(raw) == Client._parse_header_lines(raw)
    finally:
        wire.FAST_CODEC = saved
