"""Argument validation against a tool's JSON Schema (draft 2020-12, ``jsonschema``), before any side effect.

A failure becomes :class:`~services.tools.framework.InvalidArguments` (400) whose message is safe to speak to
a caller and tells the model what to fix ("I still need the name.", "The date 23/11 is not valid: expected
a date as YYYY-MM-DD."). Formats are checked (``date`` with ``datetime.date.fromisoformat``); the first
(``best_match``) error is reported. Spec: https://json-schema.org/draft/2020-12/json-schema-validation
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from services.tools.framework import InvalidArguments

__all__ = ["ArgumentValidator", "speakable"]


def _label(error: ValidationError) -> str:
    path = [str(p) for p in error.absolute_path if not isinstance(p, int)]
    return path[-1].replace("_", " ") if path else "arguments"


def _value(instance: Any) -> str:
    text = instance if isinstance(instance, str) else repr(instance)
    return text if len(text) <= 40 else text[:37] + "..."


def speakable(error: ValidationError) -> str:
    """A short sentence for one validation error, naming the field and what is expected."""
    label = _label(error)
    kind = error.validator
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    hint = schema.get("description")
    if kind == "required":
        instance = error.instance if isinstance(error.instance, Mapping) else {}
        required = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [str(p) for p in required if p not in instance]
        name = (missing[0] if missing else label).replace("_", " ")
        return f"I still need the {name}."
    if kind in ("pattern", "format"):
        expected = f": expected {hint[0].lower()}{hint[1:].rstrip('.')}" if isinstance(hint, str) and hint else ""
        return f"The {label} {_value(error.instance)} is not valid{expected}."
    if kind == "type":
        return f"The {label} must be a {error.validator_value}."
    if kind == "enum":
        values = error.validator_value if isinstance(error.validator_value, list) else []
        options = " or ".join(str(v) for v in values)
        return f"The {label} must be {options}."
    if kind in ("minLength", "minimum", "minItems"):
        return f"The {label} is too short or too small."
    if kind in ("maxLength", "maximum", "maxItems"):
        return f"The {label} is too long or too large."
    if kind == "additionalProperties":
        return "Some of the details given are not ones I understand."
    return f"The {label} is not valid."


class ArgumentValidator:
    """Validates argument objects against one schema (the compiled validator is reused)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)

    def validate(self, arguments: Mapping[str, Any]) -> None:
        """Check ``arguments``.

        Raises:
            InvalidArguments: the arguments do not match the schema (speakable message).
        """
        error = best_match(self._validator.iter_errors(arguments))
        if error is not None:
            raise InvalidArguments(speakable(error))
