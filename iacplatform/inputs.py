"""What untrusted text may contain, checked the same way at every entry point: REST bodies (JSON,
form and multipart, in iacplatform/api/parsers.py), query strings (iacplatform/api/middleware.py)
and the WebSocket frames of the hub and the agents (their consumers decode with
:func:`decode_json`).

Guarantees: :func:`decode_json` returns a document nested at most ``max_depth`` levels, without
NaN or Infinity, whose strings and keys hold no NUL character and no lone surrogate, or raises
:class:`Refused` (a ``ValueError``) saying why; it never raises anything else, RecursionError
included, for any input. Nesting is measured before the document is parsed, in C-speed passes
over the text (at most ``max_depth`` of them), so hostile nesting costs no recursion and no
Python-level loop per character. Refusing NUL and lone surrogates at the door is what keeps
PostgreSQL (``text`` and ``jsonb`` hold neither) and psycopg (it cannot encode a lone surrogate)
from failing a write halfway, whichever field, serializer or frame the text later reaches.
Does NOT: bound the size of the input (each caller knows its own limit and checks it first).
"""

from __future__ import annotations

import json
import re
from typing import Any

# A JSON string, or an unterminated one running to the end (so no quote is ever scanned twice).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKETS = str.maketrans("{}", "[]")
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")


class Refused(ValueError):
    """The input was refused; the message says why and is safe to show to its sender. ``path``
    locates a refused string in the document (keys and list indexes), when one was found."""

    def __init__(self, message: str, *, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


def bad_text(value: str) -> str | None:
    """Why ``value`` may not be stored (a NUL or a lone surrogate), or None when it may."""
    found = _BAD_CHAR.search(value)
    if found is None:
        return None
    return "NUL characters are not allowed" if found.group() == "\x00" else "lone surrogates are not allowed"


def check_document(document: Any) -> None:
    """Refuse a decoded document (or a form's values) holding a bad string or key anywhere."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            reason = bad_text(item)
            if reason is not None:
                raise Refused(reason, path=path)
        elif isinstance(item, dict):
            for key, value in item.items():
                stack.append((key, path))
                stack.append((value, (*path, key)))
        elif isinstance(item, (list, tuple)):
            stack.extend((value, (*path, index)) for index, value in enumerate(item))


def nested_deeper_than(text: str, max_depth: int) -> bool:
    """True when ``text`` nests arrays/objects deeper than ``max_depth`` (or its brackets are
    unbalanced, which no valid JSON is). Strings are removed first, so brackets inside them do not
    count; each pass then deletes the innermost pairs, so valid JSON of depth d is empty after d."""
    skeleton = _NOT_BRACKET.sub("", _STRING.sub("", text)).translate(_BRACKETS)
    for _ in range(max_depth):
        if not skeleton:
            return False
        shorter = skeleton.replace("[]", "")
        if shorter == skeleton:
            return True
        skeleton = shorter
    return bool(skeleton)


def _reject_constant(name: str) -> Any:
    raise Refused("%s is not valid JSON" % name)


def decode_json(text: str, *, max_depth: int) -> Any:
    """Parse untrusted JSON text (see the module docstring for what is refused)."""
    if nested_deeper_than(text, max_depth):
        raise Refused("JSON nested deeper than %d levels (or with unbalanced brackets)" % max_depth)
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except Refused:
        raise
    except (ValueError, RecursionError) as exc:
        raise Refused("invalid JSON: %s" % (exc.args[0] if exc.args else exc)) from None
    # Without an escape, strict UTF-8 text cannot carry a lone surrogate, and JSON strings cannot
    # carry a raw control character: only \u escapes can smuggle either in.
    if "\\u" in text or bad_text(text) is not None:
        check_document(document)
    return document
