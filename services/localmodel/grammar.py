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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pocketsphinx.lm import ArpaBoLM

__all__ = ["ANSWERS", "PHRASE_SET", "LanguageModelSpec", "answer_for", "build_answer_jsgf", "build_corpus",
           "build_jsgf", "build_lm", "tokenize", "tool_phrasings", "words_in"]

OPENERS: Final = ("i would like to", "i'd like to", "i want to", "i need to", "can i", "could i", "could you",
                  "please", "can you", "i'd like you to", "we need to", "i'm calling to", "i was hoping to",
                  "i'd love to", "i wanted to", "is it possible to", "would it be possible to", "i have to")
"""Request openers put before each tool phrase (a verb phrase follows: "i need to" + "book an appointment")."""
REQUESTS: Final = ("i need", "i would like", "i'd like", "i want", "could i get", "can i get", "can i have",
                   "could i have", "i'm looking for", "i'm after", "do you have", "have you got", "is there")
"""Request openers put before a tool's noun phrase ("could i get" + "an appointment")."""
GREETINGS: Final = ("hi", "hello", "hey", "hi there", "hello there", "good morning", "good afternoon",
                    "good evening", "yes hello", "oh hi")
"""Greetings a caller may put before a request (or say alone)."""

PHRASE_SET: Final = (
    "yes", "yes please", "yes that's right", "yeah", "sure", "sure go ahead", "go ahead", "okay", "correct",
    "that's correct", "please do", "yes go ahead", "that's right", "sounds good", "perfect", "yes it is",
    "yes that's fine", "yep", "absolutely", "of course", "that works",
    "no", "no thank you", "no thanks", "no that's all", "that's all thank you", "no that's everything",
    "that's it", "that's everything", "no that will be all", "nothing else", "not really", "no i'm good",
    "no that's it thanks", "thank you", "thanks", "thanks a lot", "goodbye", "bye", "bye bye",
    "hello", "hi", "hi there", "good morning", "good afternoon", "good evening", "how are you",
    "wait", "stop", "hold on", "sorry", "sorry what", "can you repeat that", "say that again", "pardon",
    "i don't know", "what is the weather on mars", "what time is it", "who are you", "tell me a joke",
    "are you a robot", "what can you do",
    "i want to speak to a human", "let me talk to a person", "can i speak to someone", "an agent please",
    "operator", "a real person please",
    "my name is", "my phone number is", "my number is", "the date is",
)
"""Conversational phrases every session's model contains."""
INTRO_PHRASES: Final = ("my name is", "my phone number is", "my number is", "the date is")
"""The :data:`PHRASE_SET` entries that only introduce a value (left out of the answer grammars)."""

TOOL_PHRASES: Final[Mapping[str, Sequence[str]]] = {
    "book": ("book an appointment", "make an appointment", "make a booking", "schedule an appointment",
             "book a time", "set up an appointment", "book in", "book me in", "get an appointment", "be booked in",
             "get booked in", "fit me in", "get me in", "squeeze me in", "come and see you",
             "come in", "see the dentist", "book a cleaning", "book a checkup", "arrange an appointment"),
    "cancel": ("cancel my appointment", "cancel an appointment", "cancel the booking", "cancel it",
               "cancel my booking", "call off my appointment", "cancel"),
    "check": ("check availability", "check what is available", "see what times are free", "check the schedule",
              "know what times you have", "find out what's free", "see what's available", "check for openings"),
    "lookup": ("look up my account", "find my details", "check my account", "look me up"),
    "transfer": ("speak to a human", "talk to a person", "speak to someone", "talk to an agent",
                 "transfer me to a human", "talk to a real person", "speak to a receptionist",
                 "speak with someone"),
    "end": ("end the call", "hang up", "that's all"),
}
"""Verb-specific phrasings; a tool whose name contains the verb (e.g. ``book_appointment``) gets them."""

TOOL_NOUNS: Final[Mapping[str, Sequence[str]]] = {
    "book": ("an appointment", "a booking", "a new appointment", "an appointment please", "a dental appointment",
             "a cleaning", "a checkup", "a slot", "an appointment booked"),
    "cancel": ("to cancel", "to cancel my appointment", "my appointment cancelled"),
    "check": ("any openings", "any free times", "any availability", "anything available", "anything free",
              "a free slot", "availability"),
    "transfer": ("a human", "a person", "someone to talk to", "a real person"),
}
"""Noun phrases put after :data:`REQUESTS` ("could i get" + "an appointment")."""
CHECK_QUESTIONS: Final = ("what times do you have", "what times are free", "what's available", "when are you free",
                          "what do you have", "are there any openings", "is there anything free",
                          "what is available")
"""Questions that ask for availability (a ``check`` tool gets them, with an optional date after them)."""

WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS: Final = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
                 "october", "november", "december")
ORDINALS: Final = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
                   "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
                   "eighteenth", "nineteenth", "twentieth", "twenty first", "twenty second", "twenty third",
                   "twenty fourth", "twenty fifth", "twenty sixth", "twenty seventh", "twenty eighth",
                   "twenty ninth", "thirtieth", "thirty first")
HOURS: Final = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
MINUTES: Final = ("fifteen", "thirty", "forty five", "o'clock", "o five", "twenty", "ten", "forty", "fifty",
                  "twenty five", "thirty five", "fifty five")
PARTS_OF_DAY: Final = ("in the morning", "in the afternoon", "in the evening", "a m", "p m")
DIGITS: Final = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh")
LETTERS: Final = tuple("abcdefghijklmnopqrstuvwxyz")
"""Spelled letters ("S M I T H")."""
CORRECTIONS: Final = ("no", "no no", "sorry", "actually", "no sorry", "oh no", "no actually")
"""Words that open a correction of a read-back ("no, ten in the morning"; :func:`build_jsgf`)."""
CORRECTION_LEADS: Final = ("make it", "i said", "i meant", "it's", "it should be", "change it to", "rather",
                            "can we make it", "could we make it", "can we do", "could we do", "can you make it",
                            "change the time to", "change the date to")
"""Optional words between a correction's opening and its value ("no, make it eleven")."""
ANSWER_LEADS: Final = ("how about", "let's say", "let's do", "maybe", "ideally")
"""Optional words before a date or time answering a question ("let's say Friday"); "please" may follow any
answer. Not before names: with "make it" there, "the name is Sarah Miller" was heard as "make it Karen Miller"."""
AGREEING: Final = ("yes", "yeah", "sure", "oh", "okay", "yes sure")
"""Optional words before a date or time answering a question ("yes, Friday")."""
GREETING_QUESTIONS: Final = ("how are you", "how are you doing", "how are you today", "how are you doing today",
                             "how's it going")
"""What may follow a greeting ("hi, how are you doing today?")."""
NAME_INTROS: Final = ("my name is", "my name's", "the name is", "name is", "it's", "it is", "this is", "i'm",
                      "i am", "it's for", "for", "the appointment is for", "put it under", "under")
FIRST_NAMES: Final = ("john", "mary", "james", "patricia", "robert", "jennifer", "michael", "linda", "david",
                      "susan", "william", "sarah", "richard", "karen", "thomas", "lisa", "peter", "anna", "paul",
                      "emma", "mark", "laura", "george", "alice", "daniel", "kate", "steven", "helen")
"""First names the recogniser knows (see docs/localmodel.md: a census-sized list was measured worse)."""
LAST_NAMES: Final = ("smith", "johnson", "williams", "brown", "jones", "miller", "davis", "wilson", "anderson",
                     "taylor", "thomas", "moore", "martin", "jackson", "white", "harris", "clark", "lewis",
                     "walker", "hall", "young", "king", "wright", "green", "baker", "adams", "nelson", "carter")
"""Last names the recogniser knows."""
NUMBERS: Final = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                  "twelve", "twenty", "thirty", "forty", "fifty", "hundred")


def tokenize(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters, digits and apostrophes), e.g. ``"I'd like: 10"`` → ``["i'd",
    "like", "10"]``."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def _date_phrases() -> list[str]:
    out = ["today", "tomorrow", "the day after tomorrow", "next week", "tomorrow morning", "tomorrow afternoon"]
    out += [f"on {d}" for d in WEEKDAYS] + [f"next {d}" for d in WEEKDAYS] + [f"this {d}" for d in WEEKDAYS]
    out += [f"this coming {d}" for d in WEEKDAYS] + [f"{d} morning" for d in WEEKDAYS[:5]]
    out += [f"on {m} {o}" for m, o in itertools.product(MONTHS, ORDINALS[::3])]
    out += [f"on the {o}" for o in ORDINALS]
    return out


def _time_phrases() -> list[str]:
    out = [f"at {h}" for h in HOURS] + [f"at {h} {m}" for h in HOURS for m in MINUTES]
    out += [f"at {h} a m" for h in HOURS] + [f"at {h} p m" for h in HOURS] + ["at noon", "in the morning",
                                                                             "in the afternoon"]
    out += [f"at half past {h}" for h in HOURS] + [f"at quarter past {h}" for h in HOURS]
    out += [f"at quarter to {h}" for h in HOURS] + [f"around {h}" for h in HOURS]
    out += [f"at {h} {p}" for h, p in zip(HOURS, itertools.cycle(PARTS_OF_DAY[:3]))]
    out += [f"at {h} thirty {p}" for h, p in zip(HOURS, itertools.cycle(PARTS_OF_DAY[:3]))]
    return out


def _phone_phrases() -> list[str]:
    seqs = [" ".join(DIGITS[(i * 3 + k * 7) % len(DIGITS)] for k in range(10)) for i in range(4)]
    return [f"my number is {s}" for s in seqs] + [f"my phone number is {s}" for s in seqs]


def _name_phrases() -> list[str]:
    pairs = list(zip(FIRST_NAMES, LAST_NAMES, strict=False)) + list(zip(FIRST_NAMES[::-1], LAST_NAMES, strict=False))
    intros = itertools.cycle(NAME_INTROS)
    return [f"my name is {f} {last}" for f, last in pairs] + [f"{next(intros)} {f} {last}" for f, last in pairs] + [
        f"this is {f}" for f in FIRST_NAMES] + [f"{f} {last}" for f, last in pairs[:14]]


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


def tool_phrasings(tool_name: str) -> list[str]:
    """The multi-word phrasings the grammar knows for a tool's verbs (:data:`TOOL_PHRASES`, :data:`TOOL_NOUNS`
    and, for a check tool, :data:`CHECK_QUESTIONS`), e.g. "see the dentist" for ``book_appointment``; the
    policy scores tools by them too, so what the recogniser can hear, the policy understands."""
    words = tool_name.replace("_", " ").lower().split()
    out = [p for verb, phrases in TOOL_PHRASES.items() if verb in words for p in phrases if " " in p]
    out += [n for verb, nouns in TOOL_NOUNS.items() if verb in words for n in nouns if " " in n
            and not n.startswith(("a ", "an "))]
    if "check" in words:
        out.extend(CHECK_QUESTIONS)
    return out


def _tool_nouns(tool: Mapping[str, Any]) -> list[str]:
    """The :data:`TOOL_NOUNS` of a tool's verbs (empty for a tool without one)."""
    words = str(tool.get("name", "")).replace("_", " ").lower().split()
    return [n for verb, nouns in TOOL_NOUNS.items() if verb in words for n in nouns]


def _tool_phrases(tool: Mapping[str, Any]) -> list[str]:
    name = str(tool.get("name", ""))
    words = name.replace("_", " ").lower().split()
    phrases = [" ".join(words)]
    for verb, variants in TOOL_PHRASES.items():
        if verb in words:
            phrases.extend(variants)
    if "check" in words:
        phrases.extend(CHECK_QUESTIONS)
    desc = str(tool.get("description", ""))
    phrases.extend(" ".join(tokenize(s)) for s in re.split(r"[.;!?]", desc) if tokenize(s))
    return [p for p in phrases if p]


ANSWERS: Final = ("name", "date", "time", "confirm")
"""Answers the recogniser has a grammar of their own for (:func:`build_answer_jsgf`): the value a question
asked for ("May I have your name, please?" → ``name``), or after a read-back (``confirm``: yes, no or a correction)."""


def answer_for(argument: str | None) -> str | None:
    """The :data:`ANSWERS` grammar for a tool argument the agent asked for (``name``/``*_name`` → name,
    ``*date*``/``day`` → date, ``*time*`` → time), else None."""
    arg = (argument or "").lower()
    if arg == "name" or arg.endswith("_name"):
        return "name"
    if "date" in arg or arg == "day":
        return "date"
    if "time" in arg:
        return "time"
    return None


@dataclass(frozen=True)
class LanguageModelSpec:
    """What a session's LM is built from: its tools (Realtime ``session.tools``) and instructions; ``expect``
    names the answer the agent has just asked for (one of :data:`ANSWERS`, or None)."""

    tools: tuple[str, ...]
    """Each tool as canonical JSON (hashable)."""
    instructions: str
    expect: str | None = None
    """Decode with the answer grammar for this value (:func:`build_answer_jsgf`); not part of :attr:`key`."""

    @classmethod
    def from_session(cls, tools: Iterable[Mapping[str, Any]], instructions: str | None,
                     expect: str | None = None) -> LanguageModelSpec:
        """The spec for a session's ``tools`` list and ``instructions`` string.

        Raises:
            ValueError: ``expect`` is not None or one of :data:`ANSWERS`.
        """
        if expect is not None and expect not in ANSWERS:
            raise ValueError(f"expect must be one of {ANSWERS} or None, got {expect!r}")
        return cls(tuple(json.dumps(t, sort_keys=True) for t in tools), instructions or "", expect)

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
        nouns = _tool_nouns(tool)
        for k, noun in enumerate(nouns):
            for r, request in enumerate(REQUESTS):
                sentences[f"{request} {noun}"] = None
                if slot_lists and (r + k) % 3 == 0:
                    sample = _spread(slot_lists[(r + k) % len(slot_lists)], SLOT_SAMPLE)
                    sentences[f"{GREETINGS[(r + k) % len(GREETINGS)]} {request} {noun} "
                              f"{sample[(r * 7 + k) % len(sample)]}"] = None
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
    """A JSGF grammar for ``spec``.

    Utterances: ``[greeting] [opener] <tool phrase> [<slots>]``, ``[greeting] <request> <tool noun>
    [<slots>]``, a greeting alone, a name (``[intro] <first> [<last>]``), phone digit strings (7+ digits),
    ``[for | on] <date> [<time>]``, ``<time>``, enum values and :data:`PHRASE_SET`. Times are a grammar
    of their own: "at ten", "at ten thirty", "at half past three", "quarter to four", "at three thirty in the
    afternoon", "at two p m", "noon" ("at"/"around"/"about"/"by" is required before a bare hour: without it
    short answers such as "no, thank you" were heard as times). Corrections of a read-back are not here but
    in the ``confirm`` answer grammar (:func:`build_answer_jsgf`): here they made "no, thank you" "no, at
    two". Phrases with a word outside ``vocabulary`` are left out.
    """
    allowed = set(vocabulary) if vocabulary is not None else None

    def ok(phrase: str) -> bool:
        return allowed is None or all(w in allowed for w in phrase.split())

    def alt(options: Iterable[str]) -> str:
        return _alt(o for o in options if ok(o))

    tool_phrases: list[str] = []
    nouns: list[str] = []
    enums: list[str] = []
    for raw in spec.tools:
        tool = json.loads(raw)
        tool_phrases.extend(p for p in _tool_phrases(tool) if ok(p))
        nouns.extend(n for n in _tool_nouns(tool) if ok(n))
        props = (tool.get("parameters") or {}).get("properties") or {}
        for schema in props.values():
            if isinstance(schema, Mapping) and "enum" in schema:
                enums.extend(str(v).replace("_", " ").lower() for v in schema["enum"])
    weekday = alt(WEEKDAYS)
    date = _alt(["today", "tomorrow [morning | afternoon]", "the day after tomorrow", "next week",
                 f"[on | next | this | this coming] {weekday} [morning | afternoon]",
                 f"[on] {alt(MONTHS)} [the] {alt(ORDINALS)}", f"[on] the {alt(ORDINALS)}"])
    time = _alt(["(at | around | about | by) <clock>", "in the (morning | afternoon | evening)"])
    slots = "[for | on] [<date>] [<time>] | <time> [for | on] [<date>]"
    name = f"[{alt(NAME_INTROS)}] <first> [<last>]"
    phone = "(my [phone] number is | the number is | it is) <dg> <dg> <dg> <dg> <dg> <dg> <dg>+"
    rules: list[str] = []
    if tool_phrases:
        rules.append(f"[<greet>] [{alt(OPENERS)}] {_alt(tool_phrases)} [<slots>]")
    if nouns:
        rules.append(f"[<greet>] {alt(REQUESTS)} {_alt(nouns)} [<slots>]")
    rules += [f"<greet> [{alt(GREETING_QUESTIONS)}]", "<name>", "[for | on] <date> [<time>]", "<time>", phone,
              alt(PHRASE_SET)]
    if enums:
        rules.append(alt(enums))
    return _jsgf_text(allowed, date, time, slots, name, " | ".join(rules))


def build_answer_jsgf(spec: LanguageModelSpec, answer: str, vocabulary: Iterable[str] | None = None) -> str:
    """The grammar used right after the agent asked for ``answer`` (one of :data:`ANSWERS`): that answer (for
    ``name``: ``[intro] <first> [<last>]``; ``date``: a date, maybe with a time; ``time``: a time — a bare
    hour too — maybe with a date; dates and times optionally after :data:`AGREEING` and :data:`ANSWER_LEADS`
    words, any answer before "please"; ``confirm``, after a read-back: a correction of it), or a
    :data:`PHRASE_SET` phrase ("yes", "sorry what", "no", …).

    Telephone audio is ambiguous enough that with every rule of :func:`build_jsgf` open, "my name is John
    Smith" over μ-law was heard as "on may the eighth" or "john davis"; conditioning on the question, as IVR
    grammars do per prompt, is what made it reliable (docs/localmodel.md). An answer outside this grammar
    comes back as the nearest phrase or, when nothing fits, from the trigram LM pass.

    Raises:
        ValueError: ``answer`` is not one of :data:`ANSWERS`.
    """
    if answer not in ANSWERS:
        raise ValueError(f"no answer grammar for {answer!r}")
    allowed = set(vocabulary) if vocabulary is not None else None
    full = build_jsgf(spec, vocabulary)
    header = full.split("public <utterance> = ", 1)[0]
    # without the bare intros ("my name is"), which would otherwise beat the intro followed by a name
    phrases = _alt(p for p in PHRASE_SET if p not in INTRO_PHRASES
                   and (allowed is None or all(w in allowed for w in p.split())))
    def alt(options: Iterable[str]) -> str:
        return _alt(o for o in options if allowed is None or all(w in allowed for w in o.split()))

    if answer == "confirm":
        return header + f"public <utterance> = {' | '.join(_corrections(alt))} | {phrases};\n"
    value = {"name": "<name>", "date": "[for | on] <date> [<time>]",
             "time": "(<time> | <clock>) [for | on] [<date>]"}[answer]
    if answer != "name":  # not before names: "the name is Sarah Miller" was heard as "yeah, David Carter"
        value = f"[{alt(AGREEING)}] [{alt(ANSWER_LEADS)}] {value}"
    return header + f"public <utterance> = {value} [please] | {phrases};\n"


def _corrections(alt: Callable[[Iterable[str]], str]) -> list[str]:
    """The rules of a read-back's correction (:data:`CORRECTIONS`, :data:`CORRECTION_LEADS`): "no, ten in the
    morning", "could we do eleven instead", "no, my name is John Clark"."""
    value = "(<clock> | <time> | [for | on] <date> [<time>])"
    tail = f"[{alt(['instead'])}] [please]"
    return [f"[{alt(CORRECTIONS)}] {alt(CORRECTION_LEADS)} {value} {tail}",
            f"{alt(CORRECTIONS)} {value} {tail}",
            f"{alt(CORRECTIONS)} {alt(NAME_INTROS[:5])} <first> <last>"]


def _jsgf_text(allowed: set[str] | None, date: str, time: str, slots: str, name: str, body: str) -> str:
    """The JSGF document: shared rules and the public ``<utterance>`` rule ``body``."""

    def alt(options: Iterable[str]) -> str:
        return _alt(o for o in options if allowed is None or all(w in allowed for w in o.split()))

    first = alt(FIRST_NAMES)
    last = alt(LAST_NAMES)
    parts = alt(PARTS_OF_DAY)
    clock = _alt([f"<hour> [{alt(MINUTES)}] [{parts}]", f"(half | quarter) past <hour> [{parts}]",
                  f"quarter to <hour> [{parts}]", "[twelve] noon", "midday"])
    return ("#JSGF V1.0;\ngrammar switchboard;\n"
            f"<greet> = {alt(GREETINGS)};\n<hour> = {alt(HOURS)};\n<clock> = {clock};\n"
            f"<date> = {date};\n<time> = {time};\n<slots> = {slots};\n<dg> = {alt(DIGITS)};\n"
            f"<first> = {first};\n<last> = {last};\n<name> = {name};\n"
            f"public <utterance> = {body};\n")


def words_in(spec: LanguageModelSpec) -> set[str]:
    """Every word the LM and grammar of ``spec`` may use (for the pronunciation dictionary subset)."""
    words = {w for s in build_corpus(spec) for w in s.split()}
    words.update(w for group in (WEEKDAYS, MONTHS, ORDINALS, HOURS, MINUTES, DIGITS, FIRST_NAMES, LAST_NAMES,
                                 LETTERS, GREETINGS, REQUESTS, NAME_INTROS, PARTS_OF_DAY, CORRECTIONS,
                                 CORRECTION_LEADS, ANSWER_LEADS, AGREEING, ("instead", "please"))
                 for phrase in group for w in phrase.split())

    grammar = build_jsgf(spec).split("\n", 2)[2]  # drop the header lines
    grammar = re.sub(r"<[^>]*>|\bpublic\b|/[0-9.e+-]+/", " ", grammar)
    words.update(re.findall(r"[a-z0-9][a-z0-9']*", grammar))
    return words
