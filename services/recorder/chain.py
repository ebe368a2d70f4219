"""Canonical JSON and the per-call hash chains of the archive, and their verification.

One chain per call per stream (CALLS, RT), in stream order. Record ``i`` (1-based ``chain_index``) has
``hash_i = SHA-256(bytes.fromhex(hash_{i-1}) ‖ canonical(record_i))`` with ``hash_0`` = 32 zero bytes.
``canonical`` is the JSON Canonicalization Scheme of RFC 8785 (https://www.rfc-editor.org/rfc/rfc8785, the
``rfc8785`` package) of a JSON object holding the archived fields listed in :data:`CANONICAL_FIELDS`, every
integer written as its decimal string (JCS numbers are IEEE doubles; nanosecond timestamps exceed 2^53), and
``body_sha256``: the raw body enters as its SHA-256 (hex), so altering one byte of a body breaks the chain.
``docs/verify_chain.py`` recomputes a chain from the API's NDJSON with nothing but this paragraph.

Rows archived before revision ``rec0003`` were hashed over :func:`legacy_canonical_record` (orjson, sorted keys,
integers as numbers); verification accepts either form for a row, both bind its whole content.

Verification (:func:`verify_chain`) walks the stored rows in stream order and checks each row against the
*stored* hash of its predecessor, so one altered row is reported alone rather than poisoning every later row;
gaps in ``chain_index`` name missing rows, decreasing indexes name reordered rows, and the chain head
(``chain_heads``) catches rows deleted from the end.

Gap records (:func:`gap_record`): when stream sequences were gone from the stream before the recorder read
them, the archive appends a record naming the range to the chain of every call the gap may have hit; it is
hashed like any record (deleting it breaks the chain) and verification reports it as a ``gap`` problem, so a
call with a gap never verifies as intact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import rfc8785

__all__ = [
    "CANONICAL_FIELDS",
    "GAP_TYPE",
    "GENESIS",
    "ChainHead",
    "ChainProblem",
    "ChainReport",
    "canonical_json",
    "canonical_record",
    "chain_hash",
    "gap_record",
    "legacy_canonical_record",
    "seq_gaps",
    "verify_chain",
]

GENESIS = "0" * 64
"""The hash before the first record of every chain (32 zero bytes, hex)."""

CANONICAL_FIELDS = (
    "stream", "stream_seq", "call_id", "chain_index", "subject", "direction", "type", "source", "seq",
    "msg_id", "ts_ns", "stream_ts_ns", "trace_id", "headers",
)
"""The archived columns covered by the hash (plus ``body_sha256``)."""


def canonical_json(value: Any) -> bytes:
    """``value`` (str/int/bool/None/dict/list; archived records hold no floats) as RFC 8785 canonical JSON
    bytes, every integer (not bool) first turned into its decimal string.

    With only ASCII object keys (every archived record and header set) the bytes come from orjson with sorted
    keys, which equal ``rfc8785.dumps`` there: ASCII keys sort the same by UTF-16 unit and by code point, and
    both escape exactly ``"``, ``\\`` and U+0000..U+001F with the same forms (``tests/unit/test_chain.py``
    checks the equality on arbitrary text) and much cheaper than the pure-Python package.
    Anything else goes through ``rfc8785.dumps``.

    Raises:
        rfc8785.CanonicalizationError: a value JCS cannot encode (a float NaN, a non-str key, ...).
        TypeError: a value orjson cannot encode on the fast path (a lone surrogate).
    """
    plain = _ints_as_strings(value)
    if _ascii_keys(plain):
        return orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)
    return rfc8785.dumps(plain)


def _ascii_keys(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and k.isascii() and _ascii_keys(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_ascii_keys(v) for v in value)
    return value is None or isinstance(value, str | bool)


def _ints_as_strings(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _ints_as_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_ints_as_strings(v) for v in value]
    return value


def canonical_record(row: Mapping[str, Any]) -> bytes:
    """The canonical bytes of one archived event row (a mapping with the ``events`` columns).

    ``headers`` is the stored JSON text, hashed as text; ``body`` (bytes) enters as ``body_sha256``.
    """
    record = {name: row[name] for name in CANONICAL_FIELDS}
    record["body_sha256"] = hashlib.sha256(bytes(row["body"])).hexdigest()
    return canonical_json(record)


def legacy_canonical_record(row: Mapping[str, Any]) -> bytes:
    """The canonical bytes rows archived before revision ``rec0003`` were hashed over: orjson with sorted keys,
    integers as JSON numbers."""
    record = {name: row[name] for name in CANONICAL_FIELDS}
    record["body_sha256"] = hashlib.sha256(bytes(row["body"])).hexdigest()
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def chain_hash(previous: str, canonical: bytes) -> str:
    """SHA-256 (hex) of the previous hash's 32 bytes followed by the canonical record."""
    digest = hashlib.sha256(bytes.fromhex(previous))
    digest.update(canonical)
    return digest.hexdigest()


GAP_TYPE = "$gap"
"""``type`` of a gap record in a chain."""


def gap_record(stream: str, call_id: str, chain_index: int, first_seq: int, last_seq: int, reason: str,
               detected_ns: int) -> dict[str, Any]:
    """The chain record of a gap (stream sequences ``first_seq..last_seq`` lost before archiving) in the chain
    of ``call_id``: a mapping with every ``events`` column, ``stream_seq`` = ``first_seq`` (its place in stream
    order), ``type`` = :data:`GAP_TYPE`, the range and reason as ``headers`` JSON, an empty body, and
    ``gap`` = True. The ``chain_gaps`` row stores the arguments and the hash; this rebuilds the record."""
    return {
        "stream": stream, "stream_seq": first_seq, "call_id": call_id, "chain_index": chain_index,
        "subject": "", "direction": None, "type": GAP_TYPE, "source": None, "seq": None, "msg_id": None,
        "ts_ns": None, "stream_ts_ns": detected_ns, "trace_id": None,
        "headers": canonical_json({"first_seq": first_seq, "last_seq": last_seq, "reason": reason}).decode(),
        "body": b"", "gap": True, "first_seq": first_seq, "last_seq": last_seq, "reason": reason,
    }


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record of a chain as the archive committed it (``chain_heads`` row)."""

    chain_index: int
    last_stream_seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """One finding: ``kind`` is ``altered``, ``missing``, ``reordered``, ``gap`` or ``projection`` (a stored
    projection that differs from the one recomputed from the archive).

    ``stream_seq`` / ``seq`` / ``source`` / ``type`` name the row concerned (for ``missing``, the row found
    where the missing one(s) should have been, or None when rows are missing at the end); ``detail`` says
    what did not match.
    """

    stream: str
    kind: str
    chain_index: int
    stream_seq: int | None
    seq: int | None
    source: str | None
    type: str | None
    detail: str

    def describe(self) -> str:
        """One human-readable line naming the record."""
        if self.kind == "gap":
            return f"{self.stream} #{self.chain_index}: gap: {self.detail}"
        if self.kind == "projection":
            return f"projection: {self.detail}"
        who = (f"stream_seq {self.stream_seq} (seq {self.seq} from {self.source}, {self.type})"
               if self.stream_seq is not None else "end of chain")
        return f"{self.stream} #{self.chain_index}: {self.kind} at {who}: {self.detail}"


@dataclass(slots=True)
class ChainReport:
    """The result of verifying every chain of one call."""

    call_id: str
    records: dict[str, int] = field(default_factory=dict)
    """Rows checked per stream."""
    problems: list[ChainProblem] = field(default_factory=list)
    erased: dict[str, Any] | None = None
    """``{erased_ns, erased_by, reason}`` when the call's data key was destroyed (its chains still verify)."""

    @property
    def ok(self) -> bool:
        """True when no chain has a problem."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON shape used by the REST API and the CLI."""
        return {
            "call_id": self.call_id,
            "ok": self.ok,
            "records": self.records,
            "erased": self.erased,
            "problems": [
                {"stream": p.stream, "kind": p.kind, "chain_index": p.chain_index, "stream_seq": p.stream_seq,
                 "seq": p.seq, "source": p.source, "type": p.type, "detail": p.detail,
                 "description": p.describe()}
                for p in self.problems
            ],
        }


def verify_chain(stream: str, rows: Iterable[Mapping[str, Any]], head: ChainHead | None, *,
                 absent_seqs: str = "") -> list[ChainProblem]:
    """Recompute one chain; ``rows`` are the stored rows of one call and stream ordered by ``stream_seq``.

    Returns the problems found (empty when the chain is intact), each naming the row by stream sequence and
    ``Switchboard-Seq``:

    - ``reordered``: a row whose ``chain_index`` is out of place in stream order (rows swapped);
    - ``missing``: a ``chain_index`` between 1 and the chain head that no row holds (rows deleted), with the
      neighbouring rows and the ``Switchboard-Seq`` values absent per source;
    ``absent_seqs`` (from :func:`seq_gaps` over every stream of the call, since a source numbers its
    messages across streams) is quoted in ``missing`` findings.

    - ``altered``: a row whose stored hash differs from SHA-256(stored hash of its predecessor ‖
      canonical(row)) — a column was edited — or a chain whose last row does not match the committed head;
    - ``gap``: a gap record (:func:`gap_record`, rows with ``gap`` true): stream sequences lost before
      archiving, named by range and reason.
    """
    ordered = list(rows)
    problems: list[ChainProblem] = []

    def problem(kind: str, row: Mapping[str, Any] | None, index: int, detail: str) -> None:
        problems.append(ChainProblem(
            stream, kind, index,
            int(row["stream_seq"]) if row is not None else None,
            row.get("seq") if row is not None else None,
            row.get("source") if row is not None else None,
            row.get("type") if row is not None else None,
            detail))

    indexes = [int(row["chain_index"]) for row in ordered]
    for row, index, want in zip(ordered, indexes, sorted(indexes), strict=True):
        if index != want:
            problem("reordered", row, index, f"chain index {index} found where {want} belongs in stream order")

    by_index: dict[int, Mapping[str, Any]] = {}
    for row, index in zip(ordered, indexes, strict=True):
        by_index.setdefault(index, row)
    top = max([*indexes, head.chain_index if head is not None else 0, 0])
    absent = [i for i in range(1, top + 1) if i not in by_index]
    if absent:
        for first, last in _ranges(absent):
            after = by_index.get(last + 1)
            before = by_index.get(first - 1)
            where = (f"after stream_seq {before['stream_seq']}" if before is not None else "at the start")
            where += f", before stream_seq {after['stream_seq']}" if after is not None else ", at the end"
            count = last - first + 1
            detail = f"{count} record(s) with chain index {first}..{last} missing {where}"
            if absent_seqs:
                detail += f"; Switchboard-Seq absent: {absent_seqs}"
            problem("missing", after, first, detail)

    for row, index in zip(ordered, indexes, strict=True):
        previous = GENESIS if index == 1 else _stored_hash(by_index.get(index - 1))
        if previous is None:
            continue  # predecessor missing: already reported, this row cannot be checked against it
        if not _hash_matches(previous, row):
            problem("altered", row, index, "stored hash does not match the record's content and predecessor")
    for row, index in zip(ordered, indexes, strict=True):
        if row.get("gap"):
            problem("gap", row, index, f"{stream} stream sequences {row['first_seq']}..{row['last_seq']} were "
                                       f"never archived ({row['reason']}); events of this call there are lost")
    if head is not None and head.chain_index in by_index:
        tail = by_index[head.chain_index]
        if tail["hash"] != head.hash or int(tail["stream_seq"]) != head.last_stream_seq:
            problem("altered", tail, head.chain_index, "the last record does not match the committed chain head")
    problems.sort(key=lambda p: (p.chain_index, p.kind))
    return problems


def _hash_matches(previous: str, row: Mapping[str, Any]) -> bool:
    for canonical in (canonical_record, legacy_canonical_record):
        try:
            if chain_hash(previous, canonical(row)) == row["hash"]:
                return True
        except (ValueError, TypeError, rfc8785.CanonicalizationError):
            continue
    return False


def _stored_hash(row: Mapping[str, Any] | None) -> str | None:
    if row is None:
        return None
    value = row["hash"]
    return value if _is_hex64(value) else GENESIS


def _ranges(values: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for value in values:
        if out and out[-1][1] == value - 1:
            out[-1] = (out[-1][0], value)
        else:
            out.append((value, value))
    return out


def seq_gaps(rows: Iterable[Mapping[str, Any]]) -> str:
    """``Switchboard-Seq`` values absent between the lowest and highest seen, per source (``session 41,42``)."""
    per_source: dict[str, set[int]] = {}
    for row in rows:
        if row.get("source") is not None and row.get("seq") is not None:
            per_source.setdefault(str(row["source"]), set()).add(int(row["seq"]))
    parts = []
    for source, seqs in sorted(per_source.items()):
        gaps = [s for s in range(min(seqs), max(seqs) + 1) if s not in seqs]
        if gaps:
            shown = ",".join(str(g) for g in gaps[:20]) + ("…" if len(gaps) > 20 else "")
            parts.append(f"{source} {shown}")
    return "; ".join(parts)


def _is_hex64(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 64:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True
