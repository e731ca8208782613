"""dockerd's JSON reading (nodeguard.formats.gojson): the fast path through Python's C parser must answer exactly
what the Go-faithful iterative parser answers, on any text. What Go itself answers is checked
against a real dockerd in tests/integration/test_daemon_json_oracle.py."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeguard.formats import gojson

PIECES = ['{', '}', '[', ']', ',', ':', '"a"', '"\\ud800"', '"\\udc00"', '"\\ud83d\\ude00"', '"caf\udce9"', "1",
          "-0", "1e400", "1.5e-400", "9" * 400, "0.5", "true", "null", "NaN", "Infinity", " ", "\n", "x", '"\\x"',
          '"\x01"', '"\\/"']


def _answer(fn: Any, text: str) -> tuple[str, Any]:
    try:
        return "ok", fn(text)
    except gojson.GoJSONError as exc:
        return "error", exc.msg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), max_size=25).map("".join))
def test_the_fast_path_answers_what_the_go_parser_answers(text: str) -> None:
    fast = _answer(gojson.loads, text)
    slow = _answer(lambda t: gojson.decode(t)[0], text)
    assert fast[0] == slow[0]
    if fast[0] == "ok":
        assert fast == slow


@pytest.mark.parametrize(("text", "value"), [
    ('{"a": "\\ud800x"}', {"a": "\ufffdx"}),  # a lone surrogate escape: U+FFFD, as Go
    ('{"a": "caf\udce9"}', {"a": "caf\ufffd"}),  # a byte that is not UTF-8 (surrogateescape): U+FFFD
    ('{"a": 1, "a": [2]}', {"a": [2]}),  # the last duplicate wins
    ('{"a": 1} and more', {"a": 1}),  # json.Decoder reads one value
    ('{"a": 0.' + "0" * 4998 + "1}", {"a": 0.0}),  # 5,000 digits, in range
])
def test_go_readings(text: str, value: Any) -> None:
    assert gojson.loads(text) == value


@pytest.mark.parametrize("text", ['{"a": 1e400}', '{"a": -1' + "0" * 5000 + "}", '{"a": NaN}', '{"a": Infinity}',
                                  "[" * 10_001 + "]" * 10_001, '{"a": 1,}', "\ufeff{}"])
def test_what_go_refuses_is_refused(text: str) -> None:
    with pytest.raises(gojson.GoJSONError):
        gojson.loads(text)


def test_ten_thousand_levels_are_read_without_recursion() -> None:
    value = gojson.loads("[" * 10_000 + "]" * 10_000)
    assert gojson.max_depth_exceeds(value, 9_999) and not gojson.max_depth_exceeds(value, 10_000)
    limited = gojson.depth_limited({"k": value}, 3, "deep")
    assert limited == {"k": [["deep"]]}


def test_member_spans_point_at_the_values_dockerd_reads() -> None:
    text = '{"a": [1, {"b": 2}],\n "a" : "x", "c": {}}'
    members: list[gojson.Member] = []
    gojson.decode(text, members=members)
    assert [(m.key, text[m.value_start:m.value_end]) for m in members] == [
        ("a", '[1, {"b": 2}]'), ("a", '"x"'), ("c", "{}")]
