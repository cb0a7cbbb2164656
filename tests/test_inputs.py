"""decode_json refuses hostile JSON with Refused, and nothing else, whatever the input."""

from __future__ import annotations

import pytest

from iacplatform.inputs import Refused, bad_text, check_document, decode_json, nested_deeper_than


@pytest.mark.parametrize(
    ("text", "depth"),
    [("1", 0), ("[]", 1), ('{"a": [1, {"b": []}]}', 4), ('["[[[[", "]]]]]", "\\"[["]', 1), ("[[], [[]], []]", 3)],
)
def test_nesting_is_measured_outside_strings(text: str, depth: int) -> None:
    assert not nested_deeper_than(text, depth)
    if depth:
        assert nested_deeper_than(text, depth - 1)


@pytest.mark.parametrize("text", ["[" * 5000, "]" * 10, "[}", '{"a": "unterminated', "[" * 40 + "]" * 39])
def test_hostile_json_is_refused_not_raised(text: str) -> None:
    with pytest.raises(Refused):
        decode_json(text, max_depth=32)


@pytest.mark.parametrize(
    "text", ["NaN", "[Infinity]", '"\\u0000"', '{"\\u0000": 1}', '["\\ud800"]', '"\\udfff"', "1" * 5000, "\x00"]
)
def test_bad_constants_numbers_and_characters_are_refused(text: str) -> None:
    with pytest.raises(Refused):
        decode_json(text, max_depth=32)


def test_valid_surrogate_pairs_and_escaped_backslashes_pass() -> None:
    assert decode_json('["\\ud83d\\ude00", "\\\\u0000"]', max_depth=2) == ["\U0001f600", "\\u0000"]


def test_a_refused_string_is_located() -> None:
    with pytest.raises(Refused) as caught:
        check_document({"files": {"a.tf": ["ok", "x\x00"]}})
    assert caught.value.path == ("files", "a.tf", 1)
    assert bad_text("\ud800") == "lone surrogates are not allowed"
    assert bad_text("fine \U0001f600") is None


def test_a_megabyte_of_shallow_brackets_is_measured_and_parsed() -> None:
    with pytest.raises(Refused):
        decode_json("[" + "[]" * 500_000, max_depth=64)
    assert decode_json("[%s]" % ",".join(["[]"] * 100_000), max_depth=64) == [[]] * 100_000
