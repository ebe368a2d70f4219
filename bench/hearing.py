"""Held-out evaluation of the local model's hearing (``.venv/bin/python bench/hearing.py [--runs N] [--json OUT]``).

Places every case of ``bench/hearing_cases.yaml`` (written for this evaluation and never used to build the
grammar or tune the policy; see that file) as a whole conversation against ``python -m services.localmodel``
over its Realtime WebSocket, in both G.711 μ-law 8 kHz and PCM16 24 kHz, each case with one of
:data:`VOICES` (espeak-ng voice and speed, rotating over the cases). The caller's lines are synthesised by
espeak-ng, sent faster than real time (the server's VAD works on the audio timeline) with the silence that ends a
turn; the agent's tool calls are answered with plausible outputs, as the tool workers would.

Reported per format and overall:

- **WER**: word error rate of the input transcriptions (``conversation.item.input_audio_transcription.completed``
  of every segment of a line, joined) against the line's words;
- **slot accuracy**: of every expected ``date``/``time``/``name`` argument, the share that the case's tool call
  carried with the expected value (a missing call counts its slots as wrong);
- **task success**: the share of cases whose expected tool was called with every expected argument.

Exit code 0 always (figures, not a test); ``--json`` writes the figures for ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.localmodel.grammar import tokenize  # noqa: E402
from services.session.agent import load_agent  # noqa: E402
from services.tools import receptionist  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from localmodel import start_server  # noqa: E402

from shared.audio import parse_format, silence  # noqa: E402
from shared.tts import synthesize_format  # noqa: E402
from switchboard.scenario import args_match  # noqa: E402

CASES: Final = ROOT / "bench" / "hearing_cases.yaml"
FORMATS: Final = ("audio/pcmu", "audio/pcm;rate=24000")
VOICES: Final = (("en-us+klatt", 175), ("en-us+klatt2", 150), ("en-us+klatt3", 195), ("en-us+klatt", 140))
"""(espeak-ng voice, words per minute); case i uses ``VOICES[i % len(VOICES)]``."""
SLOTS: Final = ("date", "time", "name")
TOOLS: Final = ("lookup_customer", "check_availability", "book_appointment", "cancel_appointment", "end_call",
                "transfer_to_human")
CASE_TIMEOUT_S: Final = 120.0
"""A case still talking after this long is stopped and reported as failed (the evaluation goes on)."""
QUIET_S: Final = 1.5
"""A turn is over when no response is active or due and the server has been silent this long."""
WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def resolve_date(spec: str, today: dt.date) -> str:
    """An expected date (``today``, ``tomorrow``, ``+N``, a weekday → the next one after today) as ISO."""
    if spec == "today":
        return today.isoformat()
    if spec == "tomorrow":
        return (today + dt.timedelta(days=1)).isoformat()
    if spec.startswith("+"):
        return (today + dt.timedelta(days=int(spec[1:]))).isoformat()
    ahead = (WEEKDAYS.index(spec) - today.weekday()) % 7 or 7
    return (today + dt.timedelta(days=ahead)).isoformat()


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word lists (substitutions, insertions, deletions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def fake_output(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """What the receptionist's tool worker would answer (shape only; nothing is stored)."""
    if name == "check_availability":
        return {"date": args.get("date"), "free": ["09:00", "11:00", "14:00"]}
    if name == "book_appointment":
        return {"status": "booked", "appointment_id": 7, "message": "Booked."}
    if name == "cancel_appointment":
        return {"status": "cancelled", "message": "Cancelled."}
    return {"status": "ok"}


@dataclass
class Outcome:
    """One case in one format: what was heard per line and the tool calls made."""

    case: str
    fmt: str
    voice: str
    heard: list[str] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None


class Conversation:
    """One Realtime session driven line by line (see the module docstring)."""

    def __init__(self, ws: ClientConnection, fmt: str) -> None:
        self.ws = ws
        self.fmt = parse_format(fmt)
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.active = False
        self.pending_calls: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.transcripts: dict[str, str] = {}
        self.committed: list[str] = []
        self.awaiting = False
        """A segment was committed and its response has not finished yet."""
        self.ended = False

    async def read(self) -> None:
        async for raw in self.ws:
            await self.events.put(json.loads(raw))

    async def settle(self) -> None:
        """Handle events until the agent has answered and gone quiet (answering tool calls on the way)."""
        while True:
            try:
                event = await asyncio.wait_for(self.events.get(), QUIET_S)
            except TimeoutError:
                if not self.active and not self.pending_calls and not self.awaiting:
                    return
                continue
            kind = event["type"]
            if kind == "response.created":
                self.active = True
            elif kind == "input_audio_buffer.speech_started":
                self.awaiting = True
            elif kind == "input_audio_buffer.committed":
                self.committed.append(event["item_id"])
                self.awaiting = True
            elif kind == "conversation.item.input_audio_transcription.completed":
                self.transcripts[event["item_id"]] = event["transcript"]
            elif kind == "response.output_item.done" and event["item"].get("type") == "function_call":
                self.pending_calls.append(event["item"])
            elif kind == "response.done":
                self.active = self.awaiting = False
                for item in self.pending_calls:
                    args = json.loads(item.get("arguments") or "{}")
                    self.calls.append((item["name"], args))
                    await self.send({"type": "conversation.item.create", "item": {
                        "type": "function_call_output", "call_id": item["call_id"],
                        "output": json.dumps(fake_output(item["name"], args))}})
                    if item["name"] in ("end_call", "transfer_to_human"):
                        self.ended = True
                if self.pending_calls:
                    self.pending_calls = []
                    self.active = True
                    await self.send({"type": "response.create"})
            elif kind == "error":
                raise RuntimeError(f"server error: {event.get('error')}")

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def say(self, line: str, voice: str, wpm: int) -> str:
        """Speak ``line`` (then 1 s of silence), wait for the answer; returns what the server heard."""
        before = len(self.committed)
        audio = silence(self.fmt, 200) + synthesize_format(line, self.fmt, voice=voice, rate_wpm=wpm) + silence(
            self.fmt, 1000)
        step = self.fmt.bytes_per_ms * 100
        for i in range(0, len(audio), int(step)):
            await self.send({"type": "input_audio_buffer.append",
                             "audio": base64.b64encode(audio[i:i + int(step)]).decode()})
        await self.settle()
        return " ".join(self.transcripts.get(item, "") for item in self.committed[before:]).strip()


async def run_case(url: str, case: dict[str, Any], fmt: str, voice: tuple[str, int],
                   session: dict[str, Any]) -> Outcome:
    outcome = Outcome(case["name"], fmt, f"{voice[0]}@{voice[1]}")
    fmt_obj = parse_format(fmt).realtime_format()
    config = json.loads(json.dumps(session))
    config["audio"]["input"]["format"] = fmt_obj
    config["audio"]["output"]["format"] = fmt_obj
    async with connect(url, max_size=None) as ws:
        talk = Conversation(ws, fmt)
        reader = asyncio.create_task(talk.read())
        try:
            await talk.send({"type": "session.update", "session": config})
            talk.active = True
            await talk.send({"type": "response.create"})  # the greeting
            await talk.settle()
            async def converse() -> None:
                for line in case["turns"]:
                    if talk.ended:
                        break
                    outcome.heard.append(await talk.say(line, *voice))

            await asyncio.wait_for(converse(), CASE_TIMEOUT_S)
        except Exception as exc:  # one failed case is reported, the evaluation goes on
            outcome.error = f"{type(exc).__name__}: {exc}"
        finally:
            reader.cancel()
    outcome.calls = talk.calls
    return outcome


def score(outcomes: list[Outcome], cases: dict[str, dict[str, Any]], today: dt.date) -> dict[str, Any]:
    """WER, slot accuracy and task success of ``outcomes``."""
    errors = words = slots_right = slots = successes = 0
    for outcome in outcomes:
        case = cases[outcome.case]
        for line, heard in zip(case["turns"], outcome.heard, strict=False):
            ref = tokenize(line)
            errors += word_errors(ref, tokenize(heard))
            words += len(ref)
        for line in case["turns"][len(outcome.heard):]:  # lines never spoken (the call ended early) count
            words += len(tokenize(line))
            errors += len(tokenize(line))
        want = dict(case["expect"]["args"])
        if "date" in want:
            want["date"] = resolve_date(str(want["date"]), today)
        made = [args for name, args in outcome.calls if name == case["expect"]["tool"]]
        got = made[-1] if made else None
        for slot in SLOTS:
            if slot in want:
                slots += 1
                slots_right += got is not None and args_match(want[slot], got.get(slot))
        successes += got is not None and args_match(want, got)
    return {"cases": len(outcomes), "wer": errors / max(words, 1), "slot_accuracy": slots_right / max(slots, 1),
            "task_success": successes / max(len(outcomes), 1), "words": words, "slots": slots}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_config() -> dict[str, Any]:
    """The demo receptionist's Realtime session (agents/receptionist.yaml, tools from the registry)."""
    agent = load_agent(ROOT / "agents" / "receptionist.yaml")
    tools = [getattr(receptionist, name).spec.realtime_tool() for name in TOOLS]
    return {"type": "realtime", "instructions": agent.instructions, "tools": tools,
            "audio": {"input": {"format": {}, "turn_detection": agent.turn_detection,
                                "transcription": {"model": "gpt-4o-mini-transcribe"}},
                      "output": {"format": {}, "voice": agent.voice}}}


async def evaluate(url: str, concurrency: int, verbose: bool) -> list[Outcome]:
    cases = yaml.safe_load(CASES.read_text(encoding="utf-8"))["cases"]
    session = session_config()
    for fmt in FORMATS:  # build the session's grammar in the recogniser processes first (not scored)
        await run_case(url, {"name": "warm-up", "turns": ["Hello"]}, fmt, VOICES[0], session)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, case: dict[str, Any], fmt: str) -> Outcome:
        async with gate:
            outcome = await run_case(url, case, fmt, VOICES[i % len(VOICES)], session)
        if verbose:
            print(f"  {fmt:22} {outcome.voice:18} {case['name']:26} calls={outcome.calls} heard={outcome.heard}"
                  + (f" ERROR {outcome.error}" if outcome.error else ""), flush=True)
        return outcome

    return list(await asyncio.gather(*(one(i, c, f) for i, c in enumerate(cases) for f in FORMATS)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    cases = {c["name"]: c for c in yaml.safe_load(CASES.read_text(encoding="utf-8"))["cases"]}
    lines = sum(len(c["turns"]) for c in cases.values())
    print(f"{len(cases)} held-out cases, {lines} lines, formats {', '.join(FORMATS)}, voices "
          f"{', '.join(f'{v}@{w}wpm' for v, w in VOICES)}")
    port = free_port()
    proc = start_server(port, "agent", pacing="fast", ready_s=90.0)
    runs: list[dict[str, Any]] = []
    try:
        for run in range(1, args.runs + 1):
            today = dt.date.today()
            outcomes = asyncio.run(evaluate(f"ws://127.0.0.1:{port}/v1/realtime?model=local", args.concurrency,
                                            args.verbose))
            row: dict[str, Any] = {"run": run}
            for fmt in FORMATS:
                row[fmt] = score([o for o in outcomes if o.fmt == fmt], cases, today)
            row["all"] = score(outcomes, cases, today)
            row["failed_cases"] = sorted({f"{o.case} ({o.fmt})" for o in outcomes
                                          if score([o], cases, today)["task_success"] < 1})
            runs.append(row)
            print(f"run {run}:")
            print(f"  {'format':22} {'cases':>5} {'WER':>7} {'slots':>7} {'tasks':>7}")
            for key in (*FORMATS, "all"):
                s = row[key]
                print(f"  {key:22} {s['cases']:5d} {s['wer']:7.1%} {s['slot_accuracy']:7.1%} {s['task_success']:7.1%}")
            print(f"  failed: {', '.join(row['failed_cases']) or 'none'}", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    if args.json:
        args.json.write_text(json.dumps({"date": dt.date.today().isoformat(), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
