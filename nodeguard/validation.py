"""msgspec.convert that names every problem at once, each at its own location, in pydantic's words.

The policy was validated with pydantic until issue 13 (its import and model building cost a one-shot
`check` ~160 ms); its messages are what `policy validate`, the README and the tests show. msgspec
converts in C and stops at the first problem. So: one msgspec.convert (the fast path, every valid
document), and only when it fails a walk of the same types, field by field, that reports every
problem with its location and pydantic's phrasing. The walk also accepts what pydantic's lax mode
did and msgspec's strict=False does not (_lax), and then converts again.

A field's validation beyond its type is a Check in its Annotated type: msgspec ignores it, the
Struct's __post_init__ runs it (run_checks) and the walk runs it at the field's location.
"""

import enum
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

T = TypeVar("T")
Loc = tuple[int | str, ...]


@dataclass(frozen=True, slots=True)
class Check:
    """A field's validation beyond its type, carried in its Annotated type.

    `after` gets the converted value and returns it (normalised) or raises ValueError. `before`
    sees the value as written, to explain in plainer words what the type would refuse.
    """

    after: Callable[[Any], Any] | None = None
    before: Callable[[Any], object] | None = None


class Invalid(ValueError):
    """Every problem of a document: (location, why), in the order of the types' fields."""

    def __init__(self, problems: Sequence[tuple[Loc, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{loc}: {why}" for loc, why in self.problems))


def matching(pattern: str) -> Meta:
    """A pattern constraint matched to the end of the string.

    msgspec uses re.search, whose `$` also matches before a final newline ("0660\\n" would pass);
    \\Z is the end of the string, as the pattern means and as pydantic's regex engine read `$`.
    """
    return Meta(pattern=pattern.removesuffix("$") + r"\Z")


def _checks_in(tp: Any) -> list[Check]:
    return [m for m in getattr(tp, "__metadata__", ()) if isinstance(m, Check)]


@functools.cache
def _field_checks(cls: type[msgspec.Struct]) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    return tuple((f.name, c.after) for f in msgspec.structs.fields(cls) for c in _checks_in(f.type) if c.after)


def run_checks(obj: msgspec.Struct) -> None:
    """The `after` checks of `obj`'s fields, keeping what they return (for a Struct's __post_init__)."""
    for name, check in _field_checks(type(obj)):
        value = getattr(obj, name)
        checked = check(value)
        if checked is not value:
            msgspec.structs.force_setattr(obj, name, checked)


def convert(data: Any, tp: type[T], *, unknown_key: str) -> T:
    """`data` as a `tp`, or Invalid naming every problem (`unknown_key`: why an unknown key is one)."""
    try:
        return msgspec.convert(data, tp, strict=False)
    except msgspec.ValidationError:
        problems: list[tuple[Loc, str]] = []
        fixed = _collect(data, tp, (), problems, unknown_key)
        if problems:
            raise Invalid(problems) from None
        return msgspec.convert(fixed, tp, strict=False)  # what _lax read was all it took


# -- the walk ---------------------------------------------------------------------------------

# pydantic's lax booleans (msgspec takes true/false/1/0).
_WORDS = {"y": True, "yes": True, "on": True, "t": True, "n": False, "no": False, "off": False, "f": False}
# msgspec's words -> pydantic's.
_MESSAGES = (
    (r"Expected `(?:int|float)` >= (.+)", "Input should be greater than or equal to {}"),
    (r"Expected `(?:int|float)` <= (.+)", "Input should be less than or equal to {}"),
    (r"Expected `str` matching regex (.+)", "String should match pattern '{}'"),
    (r"Expected `int`, got `str`", "Input should be a valid integer, unable to parse string as an integer"),
    (r"Expected `int`, got `float`", "Input should be a valid integer, got a number with a fractional part"),
    (r"Expected `float`, got `str`", "Input should be a valid number, unable to parse string as a number"),
    (r"Expected `int`.*", "Input should be a valid integer"),
    (r"Expected `float`.*", "Input should be a valid number"),
    (r"Expected `str`.*", "Input should be a valid string"),
    (r"Expected `array`.*", "Input should be a valid list"),
    (r"Expected `object`.*", "Input should be a valid dictionary"),
    (r"Object missing required field.*", "Field required"),
)


def _bare(tp: Any) -> Any:
    """The type under Annotated[...]."""
    return tp.__origin__ if typing.get_origin(tp) is Annotated else tp


def _shown(word: str) -> str:
    """A bound or pattern in msgspec's message as pydantic printed it: 86400.0 -> 86400, \\Z -> $."""
    if word.startswith("'"):
        import ast

        pattern: str = ast.literal_eval(word)
        return pattern.removesuffix("\\Z") + "$" if pattern.endswith("\\Z") else pattern
    return word.removesuffix(".0")


def _why(exc: msgspec.ValidationError, tp: Any, value: Any) -> str:
    """Why `value` is not a `tp`, in pydantic's words."""
    bare = _bare(tp)
    choices = ([m.value for m in bare] if isinstance(bare, type) and issubclass(bare, enum.Enum)
               else typing.get_args(bare) if typing.get_origin(bare) is Literal else None)
    if choices:
        words = [repr(c) for c in choices]
        listed = f"{', '.join(words[:-1])} or {words[-1]}" if len(words) > 1 else words[0]
        return f"Input should be {listed}, got {value!r}"
    if bare is bool:  # pydantic's two wordings: a kind of value a boolean is written as, or another kind
        readable = isinstance(value, str) or (isinstance(value, int) and abs(value) < 2**63) or (
            isinstance(value, float) and value.is_integer())
        return "Input should be a valid boolean" + (", unable to interpret input" if readable else "")
    msg = str(exc).partition(" - at `")[0]
    for rx, why in _MESSAGES:
        if m := re.fullmatch(rx, msg):
            return why.format(*(_shown(g) for g in m.groups()))
    return msg


def _path(exc: msgspec.ValidationError) -> Loc:
    """The location in msgspec's message: `... - at `$.spec.controls.firewall.ports[0]``."""
    path = str(exc).partition(" - at `")[2]
    return tuple(int(i) if i else k for k, i in re.findall(r"\.([^.\[`]+)|\[(\d+)\]", path))


def _not_finite(value: Any, bare: Any) -> bool:
    if isinstance(value, str) and bare is float:
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and bare in (int, float) and not math.isfinite(value)


def _lax(value: Any, bare: Any) -> Any:
    """What pydantic's lax mode read as a bool or a number and msgspec's strict=False does not:
    `yes`/`off`, 1.0 and 0.0 as booleans, booleans as numbers, and numbers written as Python
    reads them (" 5", "+5", "1_000")."""
    if bare is bool and isinstance(value, str):
        return _WORDS.get(value.lower(), value)
    if bare is bool and isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    if bare in (int, float) and isinstance(value, bool):
        return int(value)
    if bare in (int, float) and isinstance(value, str):
        try:
            return bare(value)
        except ValueError:
            return value
    return value


def _collect(value: Any, tp: Any, loc: Loc, problems: list[tuple[Loc, str]], unknown_key: str) -> Any:
    """Every problem of `value` as a `tp`, each at its own location, appended to `problems`.

    Returns `value` with what _lax reads made booleans and numbers. A subtree that msgspec
    converts whole is not walked.
    """
    checks = _checks_in(tp)
    if any(c.before is not None and _refused(c.before, value, loc, problems) for c in checks):
        return value
    bare, found = _bare(tp), len(problems)
    value = _lax(value, bare)
    try:
        converted = msgspec.convert(value, tp, strict=False)
    except msgspec.ValidationError:
        value = _collect_within(value, bare, loc, problems, unknown_key)
        if len(problems) > found:
            return value
        try:  # nothing more exact below: what _lax read there was all it took, or the type's own words
            converted = msgspec.convert(value, tp, strict=False)
        except msgspec.ValidationError as exc:
            where = _path(exc)
            problems.append(((*loc, *where), _why(exc, None if where else tp, value)))
            return value
    for c in checks:
        if c.after is not None and _refused(c.after, converted, loc, problems):
            break  # the first problem of a value, as pydantic stopped at its first failing validator
    return value


def _refused(check: Callable[[Any], object], value: Any, loc: Loc, problems: list[tuple[Loc, str]]) -> bool:
    """Run one Check function; a ValueError is the problem at `loc`."""
    try:
        check(value)
    except ValueError as exc:
        problems.append((loc, str(exc)))
        return True
    return False


def _collect_within(value: Any, bare: Any, loc: Loc, problems: list[tuple[Loc, str]], unknown_key: str) -> Any:
    """_collect on the parts of a Struct, list, dict or optional value."""
    origin = typing.get_origin(bare)
    if isinstance(bare, type) and issubclass(bare, msgspec.Struct):
        if not isinstance(value, dict):
            problems.append((loc, f"Input should be a valid dictionary or instance of {bare.__name__}"))
            return value
        fields = msgspec.structs.fields(bare)
        known = {f.encode_name for f in fields}
        out = dict(value)
        for f in fields:
            if f.encode_name in value:
                out[f.encode_name] = _collect(value[f.encode_name], f.type, (*loc, f.encode_name), problems,
                                              unknown_key)
            elif f.required:
                problems.append(((*loc, f.encode_name), "Field required"))
        problems.extend(((*loc, key), unknown_key if isinstance(key, str) else "Keys should be strings")
                        for key in value if key not in known)
        return out
    if origin is list and isinstance(value, list):
        return [_collect(v, typing.get_args(bare)[0], (*loc, i), problems, unknown_key) for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        items = {}
        for key, v in value.items():
            if not isinstance(key, str):
                problems.append(((*loc, key, "[key]"), "Input should be a valid string"))
            items[key] = _collect(v, typing.get_args(bare)[1], (*loc, key), problems, unknown_key)
        return items
    arms = [a for a in typing.get_args(bare) if a is not type(None)]
    if origin in (types.UnionType, typing.Union) and value is not None and len(arms) == 1:
        return _collect(value, arms[0], loc, problems, unknown_key)
    if _not_finite(value, bare):
        problems.append((loc, "Input should be a finite number"))
    return value
