"""Bad tool arguments in the caller's words: which argument, what is wrong, what it takes.

The MCP SDK checks a tool's arguments with pydantic and would hand pydantic's
report to the model: an internal class name, error codes and a documentation
URL. :func:`argument_errors` says the same in one sentence per argument, from
the tool's own input schema (the bounds and descriptions the model was shown):

    send_message: argument 'text' is missing; expected a string (the message text).

Rejected values are not quoted back (a body may be large or private); numbers
are, and for text its length.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

_TYPE_ERRORS = {"string_type", "int_type", "float_type", "bool_type", "list_type", "dict_type"}
_PARSING = {
    "int_parsing": "is not a whole number",
    "int_from_float": "is not a whole number",
    "float_parsing": "is not a number",
    "bool_parsing": "is not true or false",
}


def argument_errors(tool: str, error: ValidationError, schema: dict[str, Any] | None) -> str:
    """One sentence per bad argument of ``tool``, from pydantic's ``error``."""
    properties: dict[str, Any] = (schema or {}).get("properties", {})
    sentences: list[str] = []
    seen: set[str] = set()
    for problem in error.errors(include_url=False):
        name = str(problem["loc"][0]) if problem["loc"] else "arguments"
        if name in seen:  # a union reports each of its branches; one sentence is enough
            continue
        seen.add(name)
        prop = properties.get(name)
        if prop is None:
            sentences.append(f"{tool}: argument '{name}': {problem['msg']}.")
            continue
        expected = _expected(prop)
        description = prop.get("description")
        if description:
            expected += f" ({description})"
        sentences.append(
            f"{tool}: argument '{name}' {_what_is_wrong(problem)}; expected {expected}."
        )
    return " ".join(sentences)


def _what_is_wrong(problem: Any) -> str:
    kind, value = problem["type"], problem.get("input")
    if kind == "missing":
        return "is missing"
    if kind in _TYPE_ERRORS:
        return f"is {_json_kind(value)}"
    if kind in _PARSING:
        return _PARSING[kind]
    if kind in ("string_too_short", "string_too_long") and isinstance(value, str):
        if not value:
            return "is empty"
        return f"is {len(value)} character{'' if len(value) == 1 else 's'} long"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"is {value:g}"
    return "is not valid"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "of the wrong type"


def _expected(prop: dict[str, Any]) -> str:
    options = prop.get("anyOf", [prop])
    kinds = [_kind(option) for option in options if option.get("type") != "null"]
    text = " or ".join(kinds) or "a value"
    if len(kinds) < len(options):
        text += ", or null"
    return text


def _kind(option: dict[str, Any]) -> str:
    kind = option.get("type")
    if kind == "string":
        return "a string" + _bounds(option.get("minLength"), option.get("maxLength"), "characters")
    if kind in ("integer", "number"):
        low = option.get("minimum", option.get("exclusiveMinimum"))
        high = option.get("maximum", option.get("exclusiveMaximum"))
        word = "a whole number" if kind == "integer" else "a number"
        return word + _bounds(low, high, "")
    if kind == "boolean":
        return "true or false"
    if kind == "array":
        return "a list"
    if kind == "object":
        return "an object"
    return "a value"


def _bounds(low: float | None, high: float | None, unit: str) -> str:
    """ " of 1 to 64 characters", " from 0 to 3600", " of at most 128 characters"."""
    unit = f" {unit}" if unit else ""
    if low is not None and high is not None:
        return f" of {low:g} to {high:g}{unit}" if unit else f" from {low:g} to {high:g}"
    if high is not None:
        return f" of at most {high:g}{unit}"
    if low is not None:
        return f" of at least {low:g}{unit}"
    return ""
