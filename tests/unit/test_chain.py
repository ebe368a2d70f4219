"""Canonical JSON and hash-chain verification (no I/O): an intact chain verifies; an altered, deleted,
swapped or truncated row is named by its stream sequence and Switchboard-Seq."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.recorder.chain import (
    GENESIS,
    ChainHead,
    canonical_json,
    canonical_record,
    chain_hash,
    legacy_canonical_record,
    seq_gaps,
    verify_chain,
)


def make_chain(n: int, *, call_id: str = "CA1") -> tuple[list[dict[str, Any]], ChainHead]:
    rows: list[dict[str, Any]] = []
    previous = GENESIS
    for i in range(1, n + 1):
        row: dict[str, Any] = {
            "stream": "RT", "stream_seq": 1000 + i, "call_id": call_id, "chain_index": i,
            "subject": f"rt.{call_id}.server.response.done", "direction": "server", "type": "response.done",
            "source": "session", "seq": i, "msg_id": f"{call_id}:session:{i}", "ts_ns": 10**18 + i,
            "stream_ts_ns": 10**18 + i + 5, "trace_id": "a" * 32, "headers": f'{{"Switchboard-Seq":"{i}"}}',
            "body": f'{{"type":"response.done","n":{i}}}'.encode(),
        }
        row["hash"] = chain_hash(previous, canonical_record(row))
        previous = row["hash"]
        rows.append(row)
    return rows, ChainHead(n, rows[-1]["stream_seq"], rows[-1]["hash"])


_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8)  # header/str values are UTF-8
_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)  # ns timestamps, sequences


@given(st.dictionaries(_TEXT, st.one_of(_INT64, _TEXT, st.none()), max_size=8))
def test_canonical_json_ignores_key_order(value: dict[str, Any]) -> None:
    reordered = dict(reversed(list(value.items())))
    assert canonical_json(value) == canonical_json(reordered)


def test_canonical_json_is_rfc8785_with_integers_as_strings() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":"1"}'.encode()
    # RFC 8785 section 3.2.3: keys sorted by UTF-16 code units (U+1F600 sorts before U+FB01, unlike UTF-8)
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2}) == '{"\U0001f600":"2","\ufb01":"1"}'.encode()
    assert canonical_json({"ts": 1_700_000_000_000_000_000}) == b'{"ts":"1700000000000000000"}'


_ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
_ASCII_KEYS = st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=8)


_NESTED = st.recursive(
    st.one_of(st.none(), st.booleans(), _INT64, _ANY_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_ASCII_KEYS, inner, max_size=3)),
    max_leaves=10)


@given(st.dictionaries(_ASCII_KEYS, _NESTED, max_size=6))
def test_fast_path_equals_the_rfc8785_package(value: dict[str, Any]) -> None:
    """ASCII keys, any text (controls, U+2028, astral): canonical_json's orjson path is byte-identical to JCS."""
    import rfc8785

    assert canonical_json(value) == rfc8785.dumps(_stringified(value))


def test_rows_hashed_in_the_legacy_form_still_verify() -> None:
    rows, head = make_chain(3)
    previous = GENESIS
    for row in rows:  # rehash as a pre-rec0003 archive did
        row["hash"] = previous = chain_hash(previous, legacy_canonical_record(row))
    head = ChainHead(head.chain_index, head.last_stream_seq, previous)
    assert verify_chain("RT", rows, head) == []
    rows[1]["body"] = b"{}"
    assert [p.kind for p in verify_chain("RT", rows, head)] == ["altered"]


def test_chain_hash_is_sha256_of_previous_bytes_and_record() -> None:
    expected = hashlib.sha256(bytes(32) + b"record").hexdigest()
    assert chain_hash(GENESIS, b"record") == expected


def test_body_enters_the_record_as_its_digest() -> None:
    rows, _ = make_chain(1)
    assert hashlib.sha256(rows[0]["body"]).hexdigest().encode() in canonical_record(rows[0])


def test_intact_chain_verifies() -> None:
    rows, head = make_chain(10)
    assert verify_chain("RT", rows, head) == []


def test_altered_body_is_named_alone() -> None:
    rows, head = make_chain(10)
    rows[4]["body"] = b'{"type":"response.done","n":999}'
    problems = verify_chain("RT", rows, head)
    assert [(p.kind, p.stream_seq, p.seq) for p in problems] == [("altered", 1005, 5)]
    assert "stream_seq 1005 (seq 5 from session" in problems[0].describe()


def test_altered_header_is_detected() -> None:
    rows, head = make_chain(5)
    rows[1]["headers"] = '{"Switchboard-Seq":"77"}'
    assert [(p.kind, p.seq) for p in verify_chain("RT", rows, head)] == [("altered", 2)]


def test_deleted_row_is_missing_with_its_neighbours_and_seq() -> None:
    rows, head = make_chain(10)
    del rows[3]
    problems = verify_chain("RT", rows, head, absent_seqs=seq_gaps(rows))
    assert [(p.kind, p.chain_index, p.stream_seq) for p in problems] == [("missing", 4, 1005)]
    assert "after stream_seq 1003, before stream_seq 1005" in problems[0].detail
    assert "session 4" in problems[0].detail


def test_rows_deleted_at_the_end_are_caught_by_the_head() -> None:
    rows, head = make_chain(10)
    problems = verify_chain("RT", rows[:7], head)
    assert [(p.kind, p.chain_index) for p in problems] == [("missing", 8)]
    assert "8..10" in problems[0].detail


def test_swapped_rows_are_reordered() -> None:
    rows, head = make_chain(6)
    rows[2]["stream_seq"], rows[3]["stream_seq"] = rows[3]["stream_seq"], rows[2]["stream_seq"]
    rows.sort(key=lambda r: r["stream_seq"])  # the archive reads rows in stream order
    problems = verify_chain("RT", rows, head)
    assert {(p.kind, p.chain_index) for p in problems if p.kind == "reordered"} == {("reordered", 3),
                                                                                  ("reordered", 4)}


def test_swapped_content_is_altered() -> None:
    rows, head = make_chain(6)
    rows[1]["body"], rows[2]["body"] = rows[2]["body"], rows[1]["body"]
    assert [(p.kind, p.chain_index) for p in verify_chain("RT", rows, head)] == [("altered", 2), ("altered", 3)]


def test_rewritten_last_row_does_not_match_the_head() -> None:
    rows, head = make_chain(4)
    rows[-1]["body"] = b"{}"
    rows[-1]["hash"] = chain_hash(rows[-2]["hash"], canonical_record(rows[-1]))  # a forger recomputing the hash
    problems = verify_chain("RT", rows, head)
    assert [(p.kind, p.chain_index) for p in problems] == [("altered", 4)]


def test_garbage_hash_is_reported_not_raised() -> None:
    rows, head = make_chain(3)
    rows[1]["hash"] = "not-hex"
    kinds = [(p.kind, p.chain_index) for p in verify_chain("RT", rows, head)]
    assert ("altered", 2) in kinds


def test_seq_gaps_per_source() -> None:
    rows = [{"source": "session", "seq": s} for s in (1, 2, 5)] + [{"source": "gateway", "seq": 1}]
    assert seq_gaps(rows) == "session 3,4"


_JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), _INT64, _TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)),
    max_leaves=12)


def _stringified(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {k: _stringified(v) for k, v in value.items()}
    return [_stringified(v) for v in value]


_BMP_TEXT = st.text(alphabet=st.characters(max_codepoint=0xD7FF), max_size=8)


@given(st.dictionaries(_TEXT, _JSON_VALUES, max_size=6))
def test_canonical_json_round_trips_with_integers_as_strings(value: dict[str, Any]) -> None:
    import json

    assert json.loads(canonical_json(value)) == _stringified(value)


@given(st.dictionaries(_BMP_TEXT, st.recursive(st.one_of(st.none(), st.booleans(), _INT64, _BMP_TEXT),
                                                lambda inner: st.lists(inner, max_size=4), max_leaves=8),
                       max_size=6))
def test_canonical_json_matches_the_stdlib_for_bmp_text(value: dict[str, Any]) -> None:
    """Below U+D800 UTF-16 and code point order agree, so JCS equals sorted compact ``json.dumps``."""
    import json

    reference = json.dumps(_stringified(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(value) == reference.encode()
