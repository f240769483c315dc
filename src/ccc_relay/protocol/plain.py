"""A schema refusal in plain words: what every client shows its user.

The schema checker (msgspec) says ``Expected `str` matching regex '^m_...' - at
`$.reply_to```. A person -- or a model reading an MCP tool's answer -- needs the
field's name and what it takes instead. The relay sends this sentence, so every
client gets it; the command line only swaps a field's name for its flag.
"""

from __future__ import annotations

import re

_AT = re.compile(r"^(?P<detail>.*?) - at `\$(?P<path>[^`]*)`$")

# What a field with a pattern takes, said the way a user writes it.
FORMS = {
    "to": "an agent name (lower-case letters, digits, '.', '_', '-') or @group",
    "reply_to": "a message id such as m_Xh1TA_6v1",
    "ids": "message ids such as m_Xh1TA_6v1",
    "id": "a message id such as m_Xh1TA_6v1",
    "agent": "an agent name (lower-case letters, digits, '.', '_', '-')",
    "session": "a session id such as s_Qm3hR9xk2L",
}

_TYPES = {
    "str": "text",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "empty",
}

_DETAILS = (
    (re.compile(r"Expected `str` of length <= (\d+)"), "must be at most {0} characters"),
    (re.compile(r"Expected `str` of length >= (\d+)"), "must be at least {0} characters"),
    (re.compile(r"Expected `array` of length <= (\d+)"), "must hold at most {0} items"),
    (re.compile(r"Expected `array` of length >= (\d+)"), "must hold at least {0} item(s)"),
    (re.compile(r"Expected `str` matching regex .*"), "has a form the relay does not accept"),
    (re.compile(r"Expected `(\w+)`, got `(\w+)`"), "must be {0}, not {1}"),
    (re.compile(r"Expected `\w+` ([<>]=?) (\S+)"), "must be {0} {1}"),
    (re.compile(r"Object missing required field `(\w+)`"), "'{0}' is missing"),
    (re.compile(r"Object contains unknown field `(\w+)`"), "'{0}' is not a field the relay knows"),
    (re.compile(r"Invalid value '([^']*)'"), "is '{0}', which the relay does not know"),
)


def plain_words(message: str) -> str:
    """The schema checker's ``message`` as one sentence naming the field.

    A message in no form this knows is returned unchanged.
    """
    match = _AT.match(message)
    detail, path = (match["detail"], match["path"].lstrip(".")) if match else (message, None)
    for pattern, words in _DETAILS:
        found = pattern.fullmatch(detail)
        if found:
            detail = words.format(*(_TYPES.get(g, g) for g in found.groups()))
            break
    else:
        if match is None:
            return message
    if path is None:
        return f"the frame {detail}" if detail.startswith(("must", "is ")) else detail
    field = re.sub(r"\[\d+\]$", "", path) or "the frame"
    sentence = f"{field if field == 'the frame' else repr(field)} {detail}"
    form = FORMS.get(field)
    if form and detail == "has a form the relay does not accept":
        sentence = f"{field!r} must be {form}"
    return sentence
