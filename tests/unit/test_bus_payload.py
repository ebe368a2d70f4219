"""encode_payload: orjson's bytes where they equal json.dumps', json.dumps where orjson refuses; nothing lost."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.bus import encode_payload


def _reference(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text()
_json_without_floats = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_json = st.recursive(
    _scalars | _floats, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(), _json_without_floats, max_size=6))
def test_same_bytes_as_json_dumps_without_floats(value: dict[str, Any]) -> None:
    assert encode_payload(value) == _reference(value)


@given(st.lists(_json, max_size=6))
def test_every_value_reads_back_equal(value: list[Any]) -> None:
    assert json.loads(encode_payload(value)) == value


def test_what_orjson_refuses_goes_through_json_dumps_unchanged() -> None:
    big = {"order": 2**70, "negative": -(2**65)}
    assert encode_payload(big) == _reference(big)
    assert json.loads(encode_payload(big)) == big  # not rounded to a float
    int_keys: Any = {1: "one", "2": [3]}  # not a Payload by type, but what a caller may pass
    assert encode_payload(int_keys) == _reference(int_keys)


def test_non_finite_floats_become_null_not_invalid_json() -> None:
    assert encode_payload({"x": math.nan, "y": math.inf}) == b'{"x":null,"y":null}'


def test_bytes_pass_through() -> None:
    assert encode_payload(b"\x00\xff") == b"\x00\xff"
    assert encode_payload(bytearray(b"ab")) == b"ab"
    assert encode_payload(memoryview(b"cd")) == b"cd"
