"""What every wire contract shares: :class:`ContractError`, :class:`Contract` and the pydantic configuration.

A contract is a frozen dataclass with ``encode()`` (the JSON object that goes on the wire; the bus serializes
it, :func:`shared.bus.encode_payload`) and ``parse(data)`` (bytes, text or an already decoded mapping → an
instance). Parsing is a tolerant reader: keys the contract does not know are ignored, so a newer publisher
never breaks an older consumer; a known key of the wrong type, a missing required key, or a body that is not a
JSON object raises :class:`ContractError`. Construction is strict: an unknown keyword or a value of the wrong
type raises :class:`pydantic.ValidationError` (a ``ValueError``) at the publisher.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import ConfigDict, TypeAdapter, ValidationError

from shared.errors import PermanentError

__all__ = ["CONFIG", "Body", "Contract", "ContractError", "decode_object"]

CONFIG = ConfigDict(validate_by_name=True, validate_by_alias=True, extra="forbid")
"""Pydantic configuration of every contract: fields by name or wire alias (``from_`` / ``from``); unknown
keywords refused at construction (``parse`` drops unknown keys before validating)."""

Body = bytes | bytearray | memoryview | str | Mapping[str, Any]
"""What ``parse`` accepts: the raw message body, or the JSON object already decoded from it."""


class ContractError(PermanentError, ValueError):
    """A message body that does not match its contract (a permanent error: the same bytes never parse).

    Also a ``ValueError``, so code that guards JSON decoding with ``except ValueError`` keeps working.

    Attributes:
        message_name: the AsyncAPI message name (``call.started``, ``tools.request`` …).
        problem: what is wrong, one line, safe to log and to return to the sender (no body echoed).
    """

    def __init__(self, message_name: str, problem: str) -> None:
        super().__init__(f"{message_name}: {problem}")
        self.message_name = message_name
        self.problem = problem


def decode_object(message_name: str, data: Body) -> Mapping[str, Any]:
    """``data`` as a JSON object: bytes/text are decoded (RFC 8259), a mapping is returned as is.

    Raises:
        ContractError: not UTF-8 JSON, or JSON that is not an object.
    """
    if isinstance(data, Mapping):
        return data
    raw: object = data
    if isinstance(data, bytes | bytearray | memoryview | str):
        try:
            raw = json.loads(bytes(data) if isinstance(data, bytearray | memoryview) else data)
        except (ValueError, UnicodeDecodeError):
            raise ContractError(message_name, "the body is not valid JSON") from None
    if not isinstance(raw, dict):
        raise ContractError(message_name, "the body must be a JSON object")
    return raw


_ADAPTERS: dict[type[Any], tuple[TypeAdapter[Any], frozenset[str]]] = {}


def _adapter(cls: type[Any]) -> tuple[TypeAdapter[Any], frozenset[str]]:
    """``cls``'s TypeAdapter and every key it reads: field names and wire aliases (from the validation JSON
    Schema, public API), built once per class."""
    found = _ADAPTERS.get(cls)
    if found is None:
        adapter: TypeAdapter[Any] = TypeAdapter(cls)
        keys = frozenset(adapter.json_schema(by_alias=True).get("properties", {})) | frozenset(
            adapter.json_schema(by_alias=False).get("properties", {}))
        found = _ADAPTERS[cls] = (adapter, keys)
    return found


def _describe(exc: ValidationError) -> str:
    """One line naming each bad field and what it should be (no input values: they may be large or private)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class Contract:
    """Mixin of the pydantic-dataclass contracts: :meth:`encode` and :meth:`parse`.

    Subclasses set :attr:`MESSAGE` (the AsyncAPI message name) and may list in :attr:`OMIT_NONE` the optional
    fields that are left out of the wire object when None (others are sent as ``null``).
    """

    MESSAGE: ClassVar[str] = ""
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    def encode(self) -> dict[str, Any]:
        """The wire object (wire names, e.g. ``from``; JSON types only), for ``Bus.publish_event``."""
        body: dict[str, Any] = _adapter(type(self))[0].dump_python(self, by_alias=True, mode="json")
        for key in self.OMIT_NONE:
            if key in body and body[key] is None:
                del body[key]
        return body

    @classmethod
    def parse(cls, data: Body) -> Self:
        """Read a message body (see the module docstring: unknown keys are ignored).

        Raises:
            ContractError: not a JSON object, a required field missing, or a field of the wrong type/value.
        """
        adapter, keys = _adapter(cls)
        if isinstance(data, bytes | str):
            try:  # the common case in one pass (pydantic-core's JSON parser): a body with only known keys
                fast: Self = adapter.validate_json(data)
                return fast
            except ValidationError:
                pass  # unknown keys, or a bad body: the tolerant path below, which also words the problem
        raw = decode_object(cls.MESSAGE, data)
        try:
            value: Self = adapter.validate_python({k: v for k, v in raw.items() if k in keys})
        except ValidationError as exc:
            raise ContractError(cls.MESSAGE, _describe(exc)) from None
        return value
