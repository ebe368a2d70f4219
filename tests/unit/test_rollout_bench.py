"""The rollout drill's caller-side gap measure (``bench/_rollout_load.py``) and its drill list
(``bench/rollout.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _rollout_load import PlayoutGaps
from rollout import parse_drills


def test_audio_arriving_in_time_leaves_no_gap() -> None:
    gaps = PlayoutGaps()
    for i in range(50):  # 100 ms chunks, each arriving 100 ms after the previous one: playout never runs dry
        gaps.audio(10.0 + 0.1 * i, 800)
    assert gaps.max_gap_s == pytest.approx(0.0, abs=1e-9)  # float rounding only


def test_the_gap_is_from_the_end_of_playout_to_the_next_audio() -> None:
    gaps = PlayoutGaps()
    gaps.audio(10.0, 800)  # plays until 10.1
    gaps.audio(10.05, 4000)  # queued behind it: plays until 10.6
    gaps.audio(12.0, 160)  # 1.4 s of silence heard
    gaps.audio(12.01, 160)
    assert gaps.max_gap_s == pytest.approx(1.4)
    assert gaps.max_gap_at == 12.0


def test_a_silence_running_at_the_hang_up_counts() -> None:
    gaps = PlayoutGaps()
    gaps.audio(10.0, 800)  # plays until 10.1; the agent never speaks again
    gaps.end(15.1)
    assert gaps.max_gap_s == pytest.approx(5.0)


def test_drills_start_with_the_baseline_and_unknown_ones_are_refused() -> None:
    assert parse_drills("session-restart,baseline") == ["baseline", "session-restart"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown drill nope"):
        parse_drills("nope")
