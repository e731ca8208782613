"""JSON read the way dockerd reads daemon.json: Go's encoding/json, not Python's json module.

What differs, and matters (checked against a real dockerd 20.10, tests/integration/test_daemon_json_oracle.py):

- Bytes that are not UTF-8 inside a string become U+FFFD, one per byte; dockerd starts. Python's
  json refuses the whole file, and an audit that stops there skips every security rule.
- Nesting is limited at 10,000 levels (Go's maxNestingDepth), not by Python's recursion limit:
  this parser is iterative (a stack of open containers), so any depth is one loop.
- Numbers: Go decodes into float64; a literal beyond its range is an error (dockerd refuses the
  file). Python's int() would raise ValueError on 4,300+ digits: here digits are counted first.
- A duplicate key: the last one wins, as in Go's map and struct decoding.
- Only the first value is read (json.Decoder.Decode): what follows it is not looked at.

`decode` never raises anything but GoJSONError. The text is the file decoded with surrogateescape
(one character per undecodable byte), so positions are the same as in the patched file.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 10_000  # encoding/json's maxNestingDepth
_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_PLAIN = re.compile(r'[^"\\\x00-\x1f\udc80-\udcff]*')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# A float64 holds at most ~1.8e308: an integer literal longer than this cannot be in range, and
# int() is never asked to convert one (Python refuses above 4,300 digits).
_MAX_INT_DIGITS = 310


class GoJSONError(ValueError):
    def __init__(self, message: str, text: str, pos: int) -> None:
        self.pos = pos
        self.lineno = text.count("\n", 0, pos) + 1
        self.colno = pos - text.rfind("\n", 0, pos)
        self.msg = message
        super().__init__(f"{message} at line {self.lineno} column {self.colno}")


@dataclass(frozen=True)
class Member:
    """A top-level object member: where its key starts, where its value starts and ends."""

    key: str
    start: int
    value_start: int
    value_end: int


def _ws(text: str, i: int) -> int:
    m = _WS.match(text, i)
    return m.end() if m else i


def _string(text: str, i: int) -> tuple[str, int]:
    """The string whose opening quote is at i, and the index after its closing quote."""
    out: list[str] = []
    i += 1
    n = len(text)
    while True:
        m = _PLAIN.match(text, i)
        if m is not None and m.end() > i:
            out.append(m.group())
            i = m.end()
        if i >= n:
            raise GoJSONError("unexpected end of JSON input in a string", text, i)
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if "\udc80" <= c <= "\udcff":
            out.append("\ufffd")  # a byte that is not UTF-8: Go's replacement, one per byte
            i += 1
            continue
        if c != "\\":
            raise GoJSONError(f"invalid character {c!r} in string literal", text, i)
        esc = text[i + 1:i + 2]
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i += 2
            continue
        if esc != "u":
            raise GoJSONError(f"invalid character {esc!r} in string escape code", text, i + 1)
        code = _hex4(text, i + 2)
        i += 6
        if 0xD800 <= code < 0xDC00 and text[i:i + 2] == "\\u":
            low = _hex4(text, i + 2)
            if 0xDC00 <= low < 0xE000:
                out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                i += 6
                continue
        # A lone surrogate is U+FFFD in Go (Python would keep it, and it cannot be encoded later).
        out.append("\ufffd" if 0xD800 <= code < 0xE000 else chr(code))


def _hex4(text: str, i: int) -> int:
    digits = text[i:i + 4]
    if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
        raise GoJSONError("invalid character in \\u hexadecimal character escape", text, i)
    return int(digits, 16)


def _number(text: str, i: int) -> tuple[int | float, int]:
    m = _NUMBER.match(text, i)
    if m is None:
        raise GoJSONError(f"invalid character {text[i:i + 1]!r} looking for beginning of value", text, i)
    literal = m.group()
    if m.group(1) is None and m.group(2) is None and len(literal) <= _MAX_INT_DIGITS:
        value: int | float = int(literal)
        if abs(value) <= sys.float_info.max:
            return value, m.end()
    else:
        value = float(literal)  # float() has no digit limit; out of range gives inf
        if value not in (float("inf"), float("-inf")):
            return value, m.end()
    shown = literal if len(literal) <= 40 else f"{literal[:20]}...({len(literal)} characters)"
    raise GoJSONError(f"cannot unmarshal number {shown} into Go value of type float64 (out of range)", text, i)


def decode(text: str, *, members: list[Member] | None = None) -> tuple[Any, int]:
    """The first JSON value of `text` and the index after it; GoJSONError when Go would refuse it.

    `members`, when given, is filled with the spans of the top-level object's members (for patching
    the text in place).
    """
    stack: list[tuple[dict[str, Any] | list[Any], list[Any]]] = []
    n = len(text)
    i = _ws(text, 0)
    while True:
        # -- a value starts at i
        i = _ws(text, i)
        value_start = i
        c = text[i] if i < n else ""
        value: Any
        if c in ("{", "["):
            if len(stack) >= MAX_DEPTH:
                raise GoJSONError(f"exceeded max depth ({MAX_DEPTH})", text, i)
            j = _ws(text, i + 1)
            closer = "}" if c == "{" else "]"
            if text[j:j + 1] == closer:
                value, i = ({} if c == "{" else []), j + 1
            else:
                container: dict[str, Any] | list[Any] = {} if c == "{" else []
                slot: list[Any] = [None, j, i]  # [pending key, where its key starts, where the container starts]
                if c == "{":
                    j = _key(text, j, slot)
                stack.append((container, slot))
                i = j
                continue
        elif c == '"':
            value, i = _string(text, i)
        elif c == "-" or c.isdigit():
            value, i = _number(text, i)
        elif text.startswith("true", i):
            value, i = True, i + 4
        elif text.startswith("false", i):
            value, i = False, i + 5
        elif text.startswith("null", i):
            value, i = None, i + 4
        elif i >= n:
            raise GoJSONError("unexpected end of JSON input", text, i)
        else:
            raise GoJSONError(f"invalid character {c!r} looking for beginning of value", text, i)
        # -- a value ended at i: hand it to the open containers, closing those that end here
        while True:
            if not stack:
                return value, i
            container, slot = stack[-1]
            if isinstance(container, dict):
                container[slot[0]] = value  # a duplicate key: the last one wins, as in Go
                if members is not None and len(stack) == 1:
                    members.append(Member(slot[0], slot[1], value_start, i))
            else:
                container.append(value)
            i = _ws(text, i)
            c = text[i:i + 1]
            if c == ",":
                i = _ws(text, i + 1)
                if isinstance(container, dict):
                    slot[1] = i
                    i = _key(text, i, slot)
                break
            if c == ("}" if isinstance(container, dict) else "]"):
                stack.pop()
                value, i, value_start = container, i + 1, slot[2]
                continue
            if not c:
                raise GoJSONError("unexpected end of JSON input", text, i)
            where = "object key:value pair" if isinstance(container, dict) else "array element"
            raise GoJSONError(f"invalid character {c!r} after {where}", text, i)


def _key(text: str, i: int, slot: list[Any]) -> int:
    """Read `"key":` at i into slot[0]; the index of the value that follows."""
    if text[i:i + 1] != '"':
        raise GoJSONError(f"invalid character {text[i:i + 1]!r} looking for beginning of object key string",
                          text, i)
    key, j = _string(text, i)
    j = _ws(text, j)
    if text[j:j + 1] != ":":
        raise GoJSONError(f"invalid character {text[j:j + 1]!r} after object key", text, j)
    slot[0] = key
    return j + 1


class _NotGo(Exception):
    """The C parser met something Go reads differently: use the Go-faithful parser instead."""


def _not_go(_text: str) -> Any:
    raise _NotGo


def _go_float(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise _NotGo  # Go refuses it: let decode() say so, with the position
    return value


def _go_int(literal: str) -> int:
    if len(literal) > _MAX_INT_DIGITS:
        raise _NotGo
    value = int(literal)
    if abs(value) > sys.float_info.max:
        raise _NotGo
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_stray_bytes(text: str) -> bool:
    """An undecodable byte, as surrogateescape shows it (a lone surrogate). A strict encode finds one
    ten times faster than a regex character class over 50 MB."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def loads(text: str) -> Any:
    """decode(text)[0], taking Python's C parser when its answer is provably Go's (most files: no
    stray byte, no lone surrogate escape, no NaN, no number out of range, nothing after the value,
    shallow enough): a 50 MB file then costs what json.loads costs. Anything else goes through the
    iterative parser. Raises GoJSONError only."""
    if not _has_stray_bytes(text) and _SURROGATE_ESCAPE.search(text) is None:
        try:
            return json.loads(text, parse_float=_go_float, parse_int=_go_int, parse_constant=_not_go)
        except (_NotGo, ValueError, RecursionError):
            pass  # trailing text, a huge number, deep nesting, or simply invalid: Go's reading decides
    return decode(text)[0]


def max_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit` (iterative; scalars are never visited one by one)."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def depth_limited(value: Any, limit: int, marker: str) -> Any:
    """`value` with every container nested deeper than `limit` replaced by `marker`: what the rest of
    nodeguard (findings, events, json.dumps, ==) handles without recursing 10,000 levels deep.
    Iterative, like the parser; `value` itself when nothing is that deep."""
    if not max_depth_exceeds(value, limit):
        return value
    root: list[Any] = [value]
    work: list[tuple[Any, Any, int]] = [(root, 0, 0)]
    while work:
        parent, key, depth = work.pop()
        item = parent[key]
        if not isinstance(item, dict | list):
            continue
        if depth >= limit:
            parent[key] = marker
            continue
        copy: dict[str, Any] | list[Any] = dict(item) if isinstance(item, dict) else list(item)
        parent[key] = copy
        keys = list(copy) if isinstance(copy, dict) else range(len(copy))
        work.extend((copy, k, depth + 1) for k in keys)
    return root[0]
