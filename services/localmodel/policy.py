"""The deterministic dialogue policy of the local model.

After each user turn (text user items too, without recognition):

1. **Choosing a tool**: 2 points per word of its name (or a synonym) heard, 0.5 per description word; the best
   wins at a score of at least 2. ``end_call`` is never chosen this way.
2. **Filling arguments** from its JSON Schema with the typed extractors of :mod:`.extract` (dates, times,
   numbers, phone digits, names after "my name is", enum values; ``reason`` = the words said). Filled arguments
   are kept across turns.
3. **Asking** by voice for a missing required argument ("What date would you like?").
4. **Confirming** before a tool that changes something (anything but get/lookup/check/list/find/search tools and
   the call-control tools end_call and transfer*): "To confirm: book appointment on Monday, November 23 at 10 AM
   for John Smith. Shall I go ahead?" — yes → the function call; no → "Okay, I won't do that. …"; new values →
   read back again. Keypad digits arrive as ``DTMF <digit>``: 1 answers yes, 2 no (:data:`DTMF_ANSWERS`).
5. **After a tool result**: "You're booked …", "Your appointment … is cancelled.", a summary of the first 3
   fields for read-only tools, or "Sorry, <message>." for ``{"error": {"message": …}}``; then "Is there anything
   else I can help you with?".
6. **Ending**: "no" (or "bye") to that question → ``end_call``, then "Thank you for calling. Goodbye!"; after
   ``transfer_to_human``, "Please hold while I transfer you."
7. **No match**: "Sorry, I can't help with that. I can …" naming the tools.
8. **Greeting** (a ``response.create`` before any user turn): the instructions' ``Greeting:`` line, else their
   first sentence, else "Hello, how can I help you today?".
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from services.localmodel import extract as ex
from services.localmodel.grammar import FIRST_NAMES, LAST_NAMES, tokenize, tool_phrasings

__all__ = ["DialoguePolicy", "Reply", "ToolCall", "greeting_from_instructions", "is_read_only"]

READ_ONLY_VERBS: Final = frozenset({"get", "lookup", "look", "check", "list", "find", "search", "query", "fetch"})
CONTROL_TOOLS: Final = ("end_call", "transfer", "hang_up", "hangup")
YES: Final = frozenset({"yes", "yeah", "yep", "yup", "sure", "okay", "ok", "correct", "right", "please", "ahead",
                        "absolutely", "definitely", "fine", "do", "good", "great", "perfect", "works", "lovely",
                        "alright", "certainly", "course"})
NO: Final = frozenset({"no", "nope", "nah", "don't", "not", "nothing", "stop", "wait"})
NO_PHRASES: Final = ("that's all", "that's it", "that's everything", "that will be all", "i'm good", "all set")
"""Phrases that say "no" to "anything else?" without the word no (see :func:`says_no`)."""
SYNONYMS: Final[Mapping[str, tuple[str, ...]]] = {
    "book": ("booking", "booked", "make", "schedule", "reserve", "set", "fit"),
    "cancel": ("cancel", "cancelled", "remove", "drop"),
    "check": ("available", "availability", "free", "open", "times", "slots"),
    "availability": ("available", "free", "open"),
    "transfer": ("human", "person", "someone", "agent", "operator", "speak", "talk", "representative"),
    "human": ("person", "someone", "agent", "operator", "representative", "real"),
    "lookup": ("look", "find", "account", "details"),
    "end": ("bye", "goodbye", "hang"),
}
STOPWORDS: Final = frozenset({"a", "an", "the", "to", "for", "of", "on", "at", "my", "i", "is", "it", "in", "and",
                              "or", "by", "be", "with", "this", "that", "you", "your", "would", "like", "want",
                              "can", "could", "please", "i'd", "hi", "hello", "me", "caller", "which", "are",
                              "after", "saying", "when", "up", "what"})
DEFAULT_GREETING: Final = "Hello, how can I help you today?"
ANYTHING_ELSE: Final = "Is there anything else I can help you with?"
MIN_TOOL_SCORE: Final = 2.0
GREETING_WORDS: Final = frozenset({"hi", "hello", "hey", "good", "morning", "afternoon", "evening", "there", "say",
                                   "how", "are", "you", "please", "oh", "yes", "doing", "today", "hiya", "well",
                                   "thanks", "thank", "i'm", "fine"})
"""An utterance made only of these words (and at least one of hi/hello/hey/morning/afternoon/evening) is a
greeting, answered with one ("Say hello." — Pipecat's usual first text item — is one too)."""
KNOWN_NAMES: Final = frozenset(FIRST_NAMES) | frozenset(LAST_NAMES)
"""Names accepted without an intro ("Robert Brown") when the agent has just asked for a name."""
CORRECTION_CUES: Final = frozenset({"no", "actually", "instead", "change", "meant", "rather", "sorry", "make"})
"""Words that mark a changed value: a bare hour after them is a time (:func:`.extract.loose_time`)."""
DTMF_ANSWERS: Final[Mapping[str, str]] = {"1": "yes", "2": "no"}
"""Keypad digits (arriving as the text ``DTMF <digit>``) that answer a question: 1 = yes, 2 = no."""


def says_no(words: Sequence[str]) -> bool:
    """True when ``words`` answer no: a :data:`NO` word, or a :data:`NO_PHRASES` phrase ("that's all"), so
    "yes, that's right" is not a no."""
    text = " ".join(words)
    return bool(set(words) & NO) or any(re.search(rf"\b{re.escape(p)}\b", text) for p in NO_PHRASES)


def says_yes(words: Sequence[str]) -> bool:
    """True when ``words`` answer yes (a :data:`YES` word) and do not also answer no (:func:`says_no`)."""
    return bool(set(words) & YES) and not says_no(words)


def is_read_only(tool_name: str) -> bool:
    """True for tools that only read (get/lookup/check/list/…) or control the call (end_call, transfer…)."""
    words = tool_name.lower().split("_")
    return bool(READ_ONLY_VERBS & set(words)) or tool_name.lower().startswith(CONTROL_TOOLS)


def greeting_from_instructions(instructions: str | None) -> str:
    """The line marked ``Greeting:`` in the instructions, else their first sentence, else a default."""
    text = (instructions or "").strip()
    for line in text.splitlines():
        m = re.match(r"\s*greeting\s*:\s*(.+)", line, re.IGNORECASE)
        if m:
            return m.group(1).strip().strip('"')
    m = re.match(r"\s*(.+?[.!?])(\s|$)", text, re.DOTALL)
    if m:
        return " ".join(m.group(1).split())
    return DEFAULT_GREETING


@dataclass(frozen=True)
class ToolCall:
    """A function call the model makes: tool ``name`` and JSON ``arguments``."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """What one response does: speak ``say`` (may be empty) and/or emit ``call``."""

    say: str = ""
    call: ToolCall | None = None


def _spoken_date(iso: str) -> str:
    try:
        d = dt.date.fromisoformat(iso)
    except ValueError:
        return iso
    return f"{d:%A}, {d:%B} {d.day}"


def _spoken_time(hhmm: str) -> str:
    m = re.fullmatch(r"(\d{2}):(\d{2})", hhmm)
    if not m:
        return hhmm
    hour, minute = int(m.group(1)), int(m.group(2))
    suffix = "AM" if hour < 12 else "PM"
    h12 = hour % 12 or 12
    return f"{h12} {suffix}" if minute == 0 else f"{h12}:{minute:02d} {suffix}"


def _spoken_value(prop: str, value: Any) -> str:
    if "date" in prop and isinstance(value, str):
        return f"on {_spoken_date(value)}"
    if "time" in prop and isinstance(value, str):
        return f"at {_spoken_time(value)}"
    if "phone" in prop:
        return "phone number " + " ".join(c for c in str(value) if c.isdigit())
    if prop == "name" or prop.endswith("_name"):
        return f"for {value}"
    return f"{prop.replace('_', ' ')} {value}"


@dataclass
class DialoguePolicy:
    """One session's dialogue state and rules. ``today`` gives the date extractors count from."""

    today: Callable[[], dt.date] = dt.date.today
    tools: list[dict[str, Any]] = field(default_factory=list)
    instructions: str = ""
    pending: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    confirming: bool = False
    offered_more: bool = False
    last_call: ToolCall | None = None
    asked: str | None = None
    """The argument the last reply asked for (a bare answer fills it: "Robert Brown" after "May I have your
    name?")."""

    def configure(self, tools: Sequence[Mapping[str, Any]], instructions: str | None) -> None:
        """Use the session's ``tools`` (Realtime function tools) and ``instructions``."""
        self.tools = [dict(t) for t in tools if t.get("type", "function") == "function"]
        self.instructions = instructions or ""

    def greeting(self) -> Reply:
        """The first response's speech (see :func:`greeting_from_instructions`)."""
        return Reply(greeting_from_instructions(self.instructions))

    # --- tools -------------------------------------------------------------------------------------------

    def _tool(self, name: str | None) -> dict[str, Any] | None:
        return next((t for t in self.tools if t.get("name") == name), None)

    def score(self, tool: Mapping[str, Any], words: Sequence[str]) -> float:
        """How well ``words`` match a tool: 2 per name word or synonym heard (0.5 more when the word itself
        was said, so "cancel my booking" is a cancellation, not a booking), 2 when one of the recogniser's
        phrasings of the tool's verb was said ("see the dentist": :func:`.grammar.tool_phrasings`), 0.5 per
        description word."""
        heard = set(words) - STOPWORDS
        name_words = [w for w in str(tool.get("name", "")).lower().split("_") if w not in STOPWORDS]
        score = 0.0
        for w in name_words:
            if w in heard or any(s in heard for s in SYNONYMS.get(w, ())):
                score += 2.0 + 0.5 * (w in heard)
        text = f" {' '.join(words)} "
        if any(f" {phrase} " in text for phrase in tool_phrasings(str(tool.get("name", "")))):
            score += 2.0
        desc = set(tokenize(str(tool.get("description", "")))) - STOPWORDS - set(name_words)
        score += 0.5 * len(desc & heard)
        return score

    def best_tool(self, words: Sequence[str]) -> tuple[str | None, float]:
        """The best-matching tool name and its score (None below :data:`MIN_TOOL_SCORE`)."""
        best: tuple[str | None, float] = (None, 0.0)
        for tool in self.tools:
            if tool.get("name") == "end_call":
                continue  # only an explicit goodbye or a "no" to "anything else?" ends the call
            s = self.score(tool, words)
            if s > best[1]:
                best = (str(tool["name"]), s)
        return best if best[1] >= MIN_TOOL_SCORE else (None, best[1])

    def fill(self, tool: Mapping[str, Any], words: Sequence[str], text: str) -> dict[str, Any]:
        """Argument values found in ``words`` for ``tool``'s JSON Schema properties."""
        props: Mapping[str, Any] = (tool.get("parameters") or {}).get("properties") or {}
        found: dict[str, Any] = {}
        for prop, schema in props.items():
            value = self._extract(prop, schema if isinstance(schema, Mapping) else {}, words, text)
            if value is not None:
                found[prop] = value
        return found

    def _extract(self, prop: str, schema: Mapping[str, Any], words: Sequence[str], text: str) -> Any:
        p = prop.lower()
        if "enum" in schema:
            return ex.extract_enum(words, schema["enum"])
        if schema.get("format") == "date" or "date" in p or p == "day":
            return ex.extract_date(words, self.today())
        if "time" in p:  # a bare hour ("eleven") is a time when the agent has just asked for one, or said alone
            if (found := ex.extract_time(words)) is not None:
                return found
            if self.asked == prop or self.confirming or set(words) & CORRECTION_CUES:
                return ex.loose_time(words)  # "could we make it eleven instead?"
            return ex.bare_time(words)
        if "phone" in p:
            return ex.extract_phone(words)
        if p == "name" or p.endswith("_name"):
            named = ex.extract_name(words) or _known_full_name(words)
            if named is None and self.asked == prop:
                bare = [w for w in words if w in KNOWN_NAMES]
                named = " ".join(w.capitalize() for w in bare[:3]) or None
            return named
        if "reason" in p:
            return text.strip() or None
        if schema.get("type") in ("integer", "number") and not p.endswith("_id"):
            return ex.extract_number(words)
        if p.endswith("_id") and schema.get("type") == "integer":
            m = re.search(r"\b(?:appointment|booking|number|id)\s+(?:number\s+)?(\w+(?:\s\w+)?)", " ".join(words))
            return ex.extract_number(m.group(1).split()) if m else None
        return None

    def _missing(self, tool: Mapping[str, Any]) -> list[str]:
        required = (tool.get("parameters") or {}).get("required") or []
        return [r for r in required if r not in self.args]

    @staticmethod
    def _question(prop: str, schema: Mapping[str, Any]) -> str:
        p = prop.lower()
        if "date" in p:
            return "What date would you like?"
        if "time" in p:
            return "What time would you like?"
        if p == "name" or p.endswith("_name"):
            return "May I have your name, please?"
        if "phone" in p:
            return "What is your phone number?"
        return f"What is the {prop.replace('_', ' ')}?"

    # --- turns -------------------------------------------------------------------------------------------

    def on_user(self, text: str) -> Reply:
        """The reply to a user turn (recognised speech or typed text, e.g. ``"DTMF 1"``: see
        :data:`DTMF_ANSWERS`)."""
        keyed = re.fullmatch(r"\s*DTMF\s+(\S)\s*", text, re.IGNORECASE)
        if keyed and keyed.group(1) in DTMF_ANSWERS:
            text = DTMF_ANSWERS[keyed.group(1)]
        words = ex.words_of(text)
        if not words:
            self.asked = None
            return Reply("Sorry, I didn't catch that. Could you say it again?")
        asked, self.asked = self.asked, None
        heard = set(words)
        if heard <= GREETING_WORDS and heard & {"hi", "hello", "hey", "morning", "afternoon", "evening"} \
                and self.pending is None:
            return Reply(f"{'Good ' + w if (w := _part_of_day(heard)) else 'Hello'}! "
                         "How can I help you today?")
        self.asked = asked
        tool_name, score = self.best_tool(words)
        no = says_no(words)
        if self.confirming and self.pending:
            if says_yes(words) and not heard & CORRECTION_CUES:  # "could we do eleven instead" is no yes
                return self._call_pending()
            tool = self._tool(self.pending)
            updates = self.fill(tool, words, text) if tool else {}
            if updates:
                self.args.update(updates)
                return self._advance()
            if no:
                self._reset()
                self.offered_more = True
                return Reply(f"Okay, I won't do that. {ANYTHING_ELSE}")
        if self.offered_more and self.pending is None and no and (tool_name is None or score < 4):
            return self._end_call("caller has nothing else")
        if heard & {"bye", "goodbye"} and self._tool("end_call"):
            return self._end_call("caller said goodbye")
        if self.pending and (tool_name is None or tool_name == self.pending or score < 4):
            tool = self._tool(self.pending)
            if tool:
                self.args.update(self.fill(tool, words, text))
                return self._advance()
        if tool_name is None:
            if self.offered_more and says_yes(words):
                return Reply("Sure, what else can I help you with?")
            return Reply(self._clarify())
        tool = self._tool(tool_name)
        assert tool is not None
        self.pending = tool_name
        self.args = self.fill(tool, words, text)
        self.confirming = False
        return self._advance()

    def on_assistant(self, text: str) -> None:
        """Take in what the agent said when the client, not this policy, put it in the conversation (an
        assistant item re-created after a handover, or said by another model): the argument it asks for becomes
        :attr:`asked` (a question naming it: "May I have your name, please?" → ``name``; arguments of the pending
        tool still missing come first, then the pending tool's others, then every tool's), a question once the
        pending tool has all it needs is a read-back awaiting yes or no (:attr:`confirming`), and "anything
        else?" is :attr:`offered_more`."""
        words = ex.words_of(text)
        question = "?" in text
        self.asked = self._asked_in(words) if question else None
        tool = self._tool(self.pending)
        self.confirming = bool(question and tool is not None and self.asked is None and not self._missing(tool))
        if re.search(r"\banything else\b", " ".join(words)):
            self.offered_more = True

    def on_function_call(self, name: str, arguments: Mapping[str, Any]) -> None:
        """Take in a function call the client put in the conversation: it was made, so nothing is pending."""
        self.last_call = ToolCall(name, dict(arguments))
        self._reset()

    def _asked_in(self, words: Sequence[str]) -> str | None:
        """The argument a question (``words``) asks for, by the words naming it (see :meth:`on_assistant`)."""
        heard = set(words)
        pending = self._tool(self.pending)
        order: list[str] = list(self._missing(pending)) if pending else []
        for tool in ([pending] if pending else []) + self.tools:
            order += [str(prop) for prop in ((tool.get("parameters") or {}).get("properties") or {})]
        for prop in order:
            if _names(prop, heard):
                return prop
        return None

    def _advance(self) -> Reply:
        tool = self._tool(self.pending)
        assert tool is not None and self.pending is not None
        props: Mapping[str, Any] = (tool.get("parameters") or {}).get("properties") or {}
        missing = self._missing(tool)
        self.asked = None
        if missing:
            self.confirming = False
            self.asked = missing[0]
            return Reply(self._question(missing[0], props.get(missing[0]) or {}))
        if is_read_only(self.pending):
            return self._call_pending()
        self.confirming = True
        details = " ".join(_spoken_value(k, v) for k, v in self.args.items())
        action = self.pending.replace("_", " ")
        return Reply(f"To confirm: {action} {details}. Shall I go ahead?".replace("  ", " "))

    def _call_pending(self) -> Reply:
        assert self.pending is not None
        call = ToolCall(self.pending, dict(self.args))
        self.last_call = call
        self._reset()
        return Reply("", call)

    def _end_call(self, reason: str) -> Reply:
        self._reset()
        if not self._tool("end_call"):
            return Reply("Thank you for calling. Goodbye!")
        call = ToolCall("end_call", {"reason": reason})
        self.last_call = call
        return Reply("", call)

    def _reset(self) -> None:
        self.asked = None
        self.pending = None
        self.args = {}
        self.confirming = False
        self.offered_more = False

    def _clarify(self) -> str:
        actions = [t["name"].replace("_", " ") for t in self.tools if not str(t.get("name", "")).startswith(
            CONTROL_TOOLS)][:3]
        if not actions:
            return "Sorry, I can't help with that. Could you rephrase?"
        listed = ", ".join(actions[:-1]) + (f" or {actions[-1]}" if len(actions) > 1 else actions[0])
        return f"Sorry, I can't help with that. I can {listed}. What would you like to do?"

    def on_tool_output(self, name: str, arguments: Mapping[str, Any], output: str) -> Reply:
        """The spoken reply after a ``function_call_output`` for the call ``name(arguments)``."""
        try:
            result: Any = json.loads(output)
        except ValueError:
            result = output
        if isinstance(result, Mapping) and isinstance(result.get("error"), Mapping | str):
            err = result["error"]
            message = err.get("message", "the request failed") if isinstance(err, Mapping) else err
            self.offered_more = True
            message = re.sub(r"^\s*sorry[,.!]?\s*", "", str(message), flags=re.IGNORECASE).rstrip(".")
            return Reply(f"Sorry, {message}. {ANYTHING_ELSE}")
        if name == "end_call":
            self._reset()
            return Reply("Thank you for calling. Goodbye!")
        if name.startswith("transfer"):
            self._reset()
            return Reply("Please hold while I transfer you.")
        self.offered_more = True
        words = name.lower().split("_")
        details = " ".join(_spoken_value(k, v) for k, v in arguments.items() if k != "phone")
        if "book" in words or "reserve" in words or "schedule" in words:
            return Reply(f"You're booked {details}. {ANYTHING_ELSE}".replace("  ", " "))
        if "cancel" in words:
            return Reply(f"Your appointment {details} is cancelled. {ANYTHING_ELSE}".replace("  ", " "))
        if is_read_only(name):
            return Reply(f"{_summarize(result)} {ANYTHING_ELSE}")
        return Reply(f"Done: {name.replace('_', ' ')} {details}. {ANYTHING_ELSE}".replace("  ", " "))


def _names(prop: str, heard: set[str]) -> bool:
    """True when the words ``heard`` name argument ``prop``: name; date or day; time; phone or number; else
    every word of the argument's own name ("appointment id")."""
    p = prop.lower()
    if p == "name" or p.endswith("_name"):
        return "name" in heard
    if "date" in p or p == "day":
        return bool(heard & {"date", "day"})
    if "time" in p:
        return "time" in heard
    if "phone" in p:
        return bool(heard & {"phone", "number"})
    return set(p.split("_")) <= heard


def _known_full_name(words: Sequence[str]) -> str | None:
    """A known first name followed by a known last name anywhere in ``words`` ("… for john smith"), else None."""
    for first, last in itertools.pairwise(words):
        if first in FIRST_NAMES and last in LAST_NAMES:
            return f"{first.capitalize()} {last.capitalize()}"
    return None


def _part_of_day(heard: set[str]) -> str | None:
    """``morning``/``afternoon``/``evening`` when the greeting named one ("good morning")."""
    return next((w for w in ("morning", "afternoon", "evening") if w in heard and "good" in heard), None)


def _summarize(result: Any) -> str:
    """A short spoken summary of a read-only tool's JSON output (first 3 fields, 6 list items each)."""
    if isinstance(result, Mapping):
        parts = []
        for key, value in list(result.items())[:3]:
            label = str(key).replace("_", " ")
            if isinstance(value, list):
                items = [_spoken_time(v) if isinstance(v, str) else str(v) for v in value[:6]]
                spoken = ", ".join(items) if items else "none"
                parts.append(f"{label}: {spoken}")
            elif isinstance(value, str | int | float | bool) and not isinstance(value, Mapping):
                parts.append(f"{label}: {_spoken_date(value) if 'date' in label and isinstance(value, str) else value}")
        return ("Here is what I found. " + "; ".join(parts) + ".") if parts else "Done."
    if isinstance(result, list):
        return "I found " + ", ".join(str(v) for v in result[:6]) + "."
    return f"The result is {result}."
