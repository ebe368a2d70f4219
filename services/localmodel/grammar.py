"""The recogniser's language model: a small trigram LM built per session from its tools, its instructions and a
documented phrase set (docs/localmodel.md, "Grammar").

Telephone audio (G.711 8 kHz) decoded against pocketsphinx's full 130k-word English LM is slow (about real
time on this machine) and inaccurate. Instead each session gets a corpus of sentences generated from
templates — request openers × phrases derived from each tool's name and description × slot phrases chosen
from each argument's JSON Schema (dates, times, numbers, phone digits, names, enum values) — plus the
instructions' sentences and a fixed conversational phrase set (yes/no/thanks/…). pocketsphinx's
``ArpaBoLM`` turns the corpus into an ARPA trigram model with fixed back-off, so word orders never seen in the
corpus are still recognisable (the model is not a list of exact sentences). Words missing from the
pronunciation dictionary are dropped.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pocketsphinx.lm import ArpaBoLM

__all__ = ["PHRASE_SET", "LanguageModelSpec", "build_corpus", "build_jsgf", "build_lm", "tokenize", "words_in"]

OPENERS: Final = ("i would like to", "i'd like to", "i want to", "i need to", "can i", "could you", "please",
                  "hi i would like to", "hello i want to", "can you", "i'd like you to", "we need to")
"""Request openers put before each tool phrase."""

PHRASE_SET: Final = (
    "yes", "yes please", "yes that's right", "yeah", "sure", "sure go ahead", "go ahead", "okay", "correct",
    "that's correct", "please do", "no", "no thank you", "no thanks", "no that's all", "that's all thank you",
    "nothing else", "not really", "thank you", "thanks", "goodbye", "bye", "hello", "hi", "hi there",
    "good morning", "good afternoon", "wait", "stop", "sorry", "sorry what", "can you repeat that",
    "i don't know", "what is the weather on mars", "what time is it", "who are you", "tell me a joke",
    "i want to speak to a human", "let me talk to a person", "can i speak to someone", "an agent please",
    "my name is", "my phone number is", "my number is", "the date is", "for", "at", "on",
)
"""Conversational phrases every session's model contains."""

TOOL_PHRASES: Final[Mapping[str, Sequence[str]]] = {
    "book": ("book an appointment", "make an appointment", "make a booking", "schedule an appointment",
             "book a time", "set up an appointment"),
    "cancel": ("cancel my appointment", "cancel an appointment", "cancel the booking", "cancel it"),
    "check": ("check availability", "check what is available", "see what times are free", "check the schedule"),
    "lookup": ("look up my account", "find my details", "check my account"),
    "transfer": ("speak to a human", "talk to a person", "speak to someone", "talk to an agent",
                 "transfer me to a human"),
    "end": ("end the call", "hang up", "that's all"),
}
"""Verb-specific phrasings; a tool whose name contains the verb (e.g. ``book_appointment``) gets them."""

WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS: Final = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
                 "october", "november", "december")
ORDINALS: Final = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
                   "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
                   "eighteenth", "nineteenth", "twentieth", "twenty first", "twenty second", "twenty third",
                   "twenty fourth", "twenty fifth", "twenty sixth", "twenty seventh", "twenty eighth",
                   "twenty ninth", "thirtieth", "thirty first")
HOURS: Final = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
MINUTES: Final = ("fifteen", "thirty", "forty five", "o'clock", "o five", "twenty", "ten")
DIGITS: Final = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh")
FIRST_NAMES: Final = ("john", "mary", "james", "patricia", "robert", "jennifer", "michael", "linda", "david",
                      "susan", "william", "sarah", "richard", "karen", "thomas", "lisa", "peter", "anna", "paul",
                      "emma", "mark", "laura", "george", "alice", "daniel", "kate", "steven", "helen")
LAST_NAMES: Final = ("smith", "johnson", "williams", "brown", "jones", "miller", "davis", "wilson", "anderson",
                     "taylor", "thomas", "moore", "martin", "jackson", "white", "harris", "clark", "lewis",
                     "walker", "hall", "young", "king", "wright", "green", "baker", "adams", "nelson", "carter")
NUMBERS: Final = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                  "twelve", "twenty", "thirty", "forty", "fifty", "hundred")


def tokenize(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters, digits and apostrophes), e.g. ``"I'd like: 10"`` → ``["i'd",
    "like", "10"]``."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def _date_phrases() -> list[str]:
    out = ["today", "tomorrow", "the day after tomorrow", "next week"]
    out += [f"on {d}" for d in WEEKDAYS] + [f"next {d}" for d in WEEKDAYS] + [f"this {d}" for d in WEEKDAYS]
    out += [f"on {m} {o}" for m, o in itertools.product(MONTHS, ORDINALS[::3])]
    out += [f"on the {o}" for o in ORDINALS]
    return out


def _time_phrases() -> list[str]:
    out = [f"at {h}" for h in HOURS] + [f"at {h} {m}" for h in HOURS for m in MINUTES]
    out += [f"at {h} a m" for h in HOURS] + [f"at {h} p m" for h in HOURS] + ["at noon", "in the morning",
                                                                             "in the afternoon"]
    return out


def _phone_phrases() -> list[str]:
    seqs = [" ".join(DIGITS[(i * 3 + k * 7) % len(DIGITS)] for k in range(10)) for i in range(4)]
    return [f"my number is {s}" for s in seqs] + [f"my phone number is {s}" for s in seqs]


def _name_phrases() -> list[str]:
    pairs = list(zip(FIRST_NAMES, LAST_NAMES, strict=False)) + list(zip(FIRST_NAMES[::-1], LAST_NAMES, strict=False))
    return [f"my name is {f} {last}" for f, last in pairs] + [f"it's {f} {last}" for f, last in pairs[:10]] + [
        f"this is {f}" for f in FIRST_NAMES]


def _slot_phrases(name: str, schema: Mapping[str, Any]) -> list[str]:
    """Phrases a caller may say for one argument, from its name, ``format`` and ``enum``."""
    lname = name.lower()
    fmt = str(schema.get("format", ""))
    if "enum" in schema:
        return [str(v).replace("_", " ").lower() for v in schema["enum"]]
    if fmt == "date" or "date" in lname or "day" in lname:
        return _date_phrases()
    if fmt == "time" or "time" in lname or "hour" in lname:
        return _time_phrases()
    if "phone" in lname or ("number" in lname and schema.get("type") == "string"):
        return _phone_phrases()
    if "name" in lname:
        return _name_phrases()
    if schema.get("type") in ("integer", "number"):
        return [f"{n}" for n in NUMBERS] + [f"{n} people" for n in NUMBERS[:8]]
    return []


def _tool_phrases(tool: Mapping[str, Any]) -> list[str]:
    name = str(tool.get("name", ""))
    words = name.replace("_", " ").lower().split()
    phrases = [" ".join(words)]
    for verb, variants in TOOL_PHRASES.items():
        if verb in words:
            phrases.extend(variants)
    desc = str(tool.get("description", ""))
    phrases.extend(" ".join(tokenize(s)) for s in re.split(r"[.;!?]", desc) if tokenize(s))
    return [p for p in phrases if p]


@dataclass(frozen=True)
class LanguageModelSpec:
    """What a session's LM is built from: its tools (Realtime ``session.tools``) and instructions."""

    tools: tuple[str, ...]
    """Each tool as canonical JSON (hashable)."""
    instructions: str

    @classmethod
    def from_session(cls, tools: Iterable[Mapping[str, Any]], instructions: str | None) -> LanguageModelSpec:
        """The spec for a session's ``tools`` list and ``instructions`` string."""
        return cls(tuple(json.dumps(t, sort_keys=True) for t in tools), instructions or "")

    @property
    def key(self) -> str:
        """A short stable id (sha256 prefix) naming this LM in a decoder."""
        digest = hashlib.sha256("\n".join((*self.tools, self.instructions)).encode()).hexdigest()
        return f"lm_{digest[:16]}"


def _spread(values: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` items spread evenly over ``values`` (keeps the corpus balanced between slots)."""
    if len(values) <= limit:
        return list(values)
    step = len(values) / limit
    return [values[int(i * step)] for i in range(limit)]


SLOT_SAMPLE: Final = 24
"""Slot phrases combined with each tool phrase (a spread sample; every slot phrase also appears alone)."""
PHRASE_WEIGHT: Final = 4
"""How many times each :data:`PHRASE_SET` phrase is counted (short answers must not be drowned by slots)."""


def build_corpus(spec: LanguageModelSpec) -> list[str]:
    """Training sentences (lower-case, space-separated words) for ``spec``; deterministic and de-duplicated
    except for :data:`PHRASE_SET`, which is weighted by :data:`PHRASE_WEIGHT`."""
    sentences: dict[str, None] = {}
    for raw in spec.tools:
        tool = json.loads(raw)
        params = tool.get("parameters") or {}
        props: Mapping[str, Any] = params.get("properties") or {}
        slot_lists = [v for n, s in props.items() if isinstance(s, Mapping) and (v := _slot_phrases(n, s))]
        for phrase in _tool_phrases(tool):
            sentences[phrase] = None
            for o in OPENERS:
                sentences[f"{o} {phrase}"] = None
            for i, values in enumerate(slot_lists):
                sample = _spread(values, SLOT_SAMPLE)
                for j, value in enumerate(sample):
                    sentences[f"{OPENERS[(i + j) % len(OPENERS)]} {phrase} {value}"] = None
                    if i + 1 < len(slot_lists):
                        nxt = _spread(slot_lists[i + 1], SLOT_SAMPLE)
                        sentences[f"{phrase} {value} {nxt[j % len(nxt)]}"] = None
        for values in slot_lists:
            for value in values:
                sentences[value] = None
    for line in spec.instructions.splitlines():
        for sentence in re.split(r"[.;!?]", line.split(":", 1)[-1]):
            words = tokenize(sentence)
            if words:
                sentences[" ".join(words)] = None
    return list(sentences) + [p for p in PHRASE_SET for _ in range(PHRASE_WEIGHT)]


def build_lm(spec: LanguageModelSpec, vocabulary: Iterable[str] | None = None) -> str:
    """The ARPA trigram text for ``spec`` (``ArpaBoLM``, fixed discount 0.5, sentence markers added).

    Args:
        vocabulary: when given, words outside it (not in the pronunciation dictionary) are removed.
    """
    allowed = set(vocabulary) if vocabulary is not None else None
    lines = []
    for sentence in build_corpus(spec):
        words = sentence.split()
        if allowed is not None:
            words = [w for w in words if w in allowed]
        if words:
            lines.append(" ".join(words))
    model = ArpaBoLM(add_start=True, discount_mass=0.5)
    model.read_corpus(io.StringIO("\n".join(lines)))
    model.compute()
    out = io.StringIO()
    model.write(out)
    return out.getvalue()


def _alt(options: Iterable[str]) -> str:
    return "(" + " | ".join(dict.fromkeys(o for o in options if o)) + ")"


def build_jsgf(spec: LanguageModelSpec, vocabulary: Iterable[str] | None = None) -> str:
    """A JSGF grammar for ``spec``: ``[greeting] [opener] <tool phrase> [for|on] [<date>] [<time>]``, names
    after "my name is", phone digit strings (7+ digits), dates, times, enum values and :data:`PHRASE_SET`.
    Phrases with a word outside ``vocabulary`` are left out."""
    allowed = set(vocabulary) if vocabulary is not None else None

    def ok(phrase: str) -> bool:
        return allowed is None or all(w in allowed for w in phrase.split())

    tool_phrases: list[str] = []
    enums: list[str] = []
    for raw in spec.tools:
        tool = json.loads(raw)
        tool_phrases.extend(p for p in _tool_phrases(tool) if ok(p))
        props = (tool.get("parameters") or {}).get("properties") or {}
        for schema in props.values():
            if isinstance(schema, Mapping) and "enum" in schema:
                enums.extend(str(v).replace("_", " ").lower() for v in schema["enum"])
    weekday = _alt(WEEKDAYS)
    date = _alt(["today", "tomorrow", "the day after tomorrow", f"[on | next | this] {weekday}",
                 f"[on] {_alt(MONTHS)} [the] {_alt(ORDINALS)}", f"on the {_alt(ORDINALS)}"])
    time = _alt([f"at {_alt(HOURS)} [{_alt(MINUTES)}] [a m | p m]", "at noon", "in the morning",
                 "in the afternoon"])
    name = f"[my name is | it's | this is] {_alt(FIRST_NAMES)} [{_alt(LAST_NAMES)}]"
    phone = "(my [phone] number is | the number is | it is) <dg> <dg> <dg> <dg> <dg> <dg> <dg>+"
    rules = [f"[hi | hello] [{_alt(OPENERS)}] {_alt(tool_phrases)} [for | on] [<date>] [<time>]"] if tool_phrases \
        else []
    rules += [name, phone, "[for] <date> [<time>]", "<time>", _alt(p for p in PHRASE_SET if ok(p))]
    if enums:
        rules.append(_alt(e for e in enums if ok(e)))
    body = " | ".join(rules)
    return ("#JSGF V1.0;\ngrammar switchboard;\n"
            f"<date> = {date};\n<time> = {time};\n<dg> = {_alt(DIGITS)};\n"
            f"public <utterance> = {body};\n")


def words_in(spec: LanguageModelSpec) -> set[str]:
    """Every word the LM and grammar of ``spec`` may use (for the pronunciation dictionary subset)."""
    words = {w for s in build_corpus(spec) for w in s.split()}
    words.update(w for group in (WEEKDAYS, MONTHS, ORDINALS, HOURS, MINUTES, DIGITS, FIRST_NAMES, LAST_NAMES)
                 for phrase in group for w in phrase.split())
    grammar = build_jsgf(spec).split("\n", 2)[2]  # drop the header lines
    grammar = re.sub(r"<[^>]*>|\bpublic\b|/[0-9.]+/", " ", grammar)
    words.update(re.findall(r"[a-z0-9][a-z0-9']*", grammar))
    return words
