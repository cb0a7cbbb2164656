"""The REST API's parsers: every body is bounded in size, and JSON in depth, before it is parsed,
and no parsed value may hold a NUL or a lone surrogate (iacplatform/inputs.py), whichever
serializer or field reads it later."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import QueryDict
from rest_framework import parsers
from rest_framework.exceptions import ParseError, ValidationError

from iacplatform import inputs
from iacplatform.api.exceptions import RequestTooLarge


def read_bounded(stream: Any, parser_context: Mapping[str, Any] | None) -> bytes:
    """The body, refused (413) as soon as it is longer than HTTP_MAX_BODY_BYTES: never more than
    the limit is read, whatever Content-Length claimed."""
    limit = settings.HTTP_MAX_BODY_BYTES
    request = (parser_context or {}).get("request")
    declared = request.META.get("CONTENT_LENGTH") if request is not None else None
    if declared and str(declared).isdigit() and int(declared) > limit:
        raise RequestTooLarge()
    body = stream.read(limit + 1)
    if len(body) > limit:
        raise RequestTooLarge()
    return bytes(body)


def _encoding(parser_context: Mapping[str, Any] | None) -> str:
    encoding = str((parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET)
    try:
        "".encode(encoding)  # refuses bytes-to-bytes codecs (bz2_codec) as well as unknown names
    except (LookupError, UnicodeError):
        raise ParseError("Unsupported charset %r in the Content-Type header." % encoding[:50]) from None
    return encoding


def refusal(exc: inputs.Refused) -> Exception:
    """A bad string under a top-level key is that field's error (as a serializer would report
    it); anything else is a parse error of the whole body."""
    if exc.path and isinstance(exc.path[0], str) and len(exc.path[0]) <= 100:
        return ValidationError({exc.path[0]: [str(exc)]})
    return ParseError(str(exc))


def _check(data: Any) -> None:
    try:
        inputs.check_document(data)
    except inputs.Refused as exc:
        raise refusal(exc) from None


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        encoding = _encoding(parser_context)
        raw = read_bounded(stream, parser_context)
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            raise ParseError("JSON parse error - the body is not valid %s" % encoding) from None
        try:
            return inputs.decode_json(text, max_depth=settings.API_JSON_MAX_DEPTH)
        except inputs.Refused as exc:
            if exc.path:
                raise refusal(exc) from None
            raise ParseError("JSON parse error - %s" % exc) from None


class FormParser(parsers.FormParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        data = QueryDict(read_bounded(stream, parser_context), encoding=_encoding(parser_context))
        _check({key: data.getlist(key) for key in data})
        return data


class MultiPartParser(parsers.MultiPartParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        parsed = super().parse(stream, media_type, parser_context)
        _check({key: parsed.data.getlist(key) for key in parsed.data})
        return parsed
