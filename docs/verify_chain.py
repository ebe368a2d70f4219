#!/usr/bin/env python3
"""Recompute every hash chain of a Switchboard archive (SQLite) without Switchboard's code (docs/security.md).

Usage: python verify_chain.py switchboard.db   (needs only the `rfc8785` package). Prints each chain's head
hash: compare it with the signed checkpoint in the AUDIT stream. Exit 1 when any chain is broken.
Rule: hash_i = SHA-256(hash_{i-1} bytes + JCS(record_i)), hash_0 = 32 zero bytes; record = the FIELDS columns +
body_sha256, every integer as a decimal string; a gap row is a record of type "$gap" with empty body.
"""
import hashlib
import sqlite3
import sys

import rfc8785

FIELDS = ("stream", "stream_seq", "call_id", "chain_index", "subject", "direction", "type", "source", "seq",
          "msg_id", "ts_ns", "stream_ts_ns", "trace_id", "headers")


def jcs(obj: dict) -> bytes:
    return rfc8785.dumps({k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in obj.items()})


def main(path: str) -> int:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM events")]
    for g in db.execute("SELECT * FROM chain_gaps WHERE call_id IS NOT NULL"):
        headers = jcs({"first_seq": g["first_seq"], "last_seq": g["last_seq"], "reason": g["reason"]}).decode()
        rows.append({"stream": g["stream"], "stream_seq": g["first_seq"], "call_id": g["call_id"], "type": "$gap",
                     "chain_index": g["chain_index"], "subject": "", "direction": None, "source": None, "seq": None,
                     "msg_id": None, "ts_ns": None, "stream_ts_ns": g["detected_ns"], "trace_id": None,
                     "headers": headers, "body": b"", "hash": g["hash"]})
    chains: dict = {}
    for row in rows:
        chains.setdefault((row["call_id"], row["stream"]), []).append(row)
    broken = 0
    for (call_id, stream), chain in sorted(chains.items()):
        previous, last_seq = "0" * 64, -1
        for position, row in enumerate(sorted(chain, key=lambda r: r["chain_index"]), 1):
            record = {name: row[name] for name in FIELDS} | {"body_sha256": hashlib.sha256(row["body"]).hexdigest()}
            digest = hashlib.sha256(bytes.fromhex(previous) + jcs(record)).hexdigest()
            if row["chain_index"] != position or row["stream_seq"] < last_seq or digest != row["hash"]:
                print(f"BROKEN {call_id} {stream} at chain index {position} (stream_seq {row['stream_seq']})")
                broken += 1
                break
            previous, last_seq = digest, row["stream_seq"]
        else:
            print(f"ok {call_id} {stream} {len(chain)} records head {previous}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
