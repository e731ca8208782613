"""daemon.json patching: only the offending keys change, every other byte stays as the admin wrote it."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nodeguard.controls.daemon_config import DELETE
from nodeguard.daemon_json import apply_patch, top_level_members

ADMIN_FILE = """{
    "data-root": "/srv/docker",
    "icc": true,
    "log-opts": {"max-size": "50m",   "max-file": "9"},
    "hosts": ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2375"],
    "storage-driver":"overlay2"
}
"""


def test_replacing_a_value_keeps_every_other_byte() -> None:
    out = apply_patch(ADMIN_FILE, {"icc": False})
    assert out == ADMIN_FILE.replace('"icc": true', '"icc": false')


def test_removing_a_middle_and_the_last_key() -> None:
    out = apply_patch(ADMIN_FILE, {"hosts": DELETE})
    assert json.loads(out) == {k: v for k, v in json.loads(ADMIN_FILE).items() if k != "hosts"}
    assert '"log-opts": {"max-size": "50m",   "max-file": "9"},' in out  # untouched spacing
    out = apply_patch(ADMIN_FILE, {"storage-driver": DELETE})
    assert out.rstrip().endswith('"tcp://0.0.0.0:2375"]\n}')


def test_adding_keys_follows_the_file_indentation() -> None:
    out = apply_patch(ADMIN_FILE, {"live-restore": True, "no-new-privileges": True})
    assert '\n    "live-restore": true,\n    "no-new-privileges": true\n}' in out
    assert out.startswith(ADMIN_FILE.rstrip()[:-1].rstrip())


def test_empty_and_missing_files() -> None:
    assert json.loads(apply_patch("", {"icc": False})) == {"icc": False}
    assert json.loads(apply_patch("{}", {"icc": False})) == {"icc": False}
    assert json.loads(apply_patch("{ }\n", {"icc": DELETE})) == {}


def test_a_file_with_a_trailing_comment_like_garbage_is_reserialized() -> None:
    # Not valid JSON at all: the caller never patches such a file (it restores the last good one),
    # but apply_patch must not produce something invalid if asked.
    assert top_level_members("[1, 2]") is None


json_scalars = st.one_of(st.booleans(), st.integers(-10, 10), st.text(max_size=5), st.none())
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
keys = st.sampled_from(["icc", "live-restore", "hosts", "log-opts", "a", "é", "x\"y"])


@settings(max_examples=300, deadline=None)
@given(
    original=st.dictionaries(keys, json_values, max_size=5),
    patch=st.dictionaries(keys, st.one_of(json_values, st.just(DELETE)), max_size=4),
    indent=st.sampled_from([None, 2, 4, "\t"]),
)
def test_patch_result_is_always_the_expected_object(original: dict[str, Any], patch: dict[str, Any],
                                                    indent: int | str | None) -> None:
    text = json.dumps(original, indent=indent)
    out = apply_patch(text, patch)
    expected = dict(original)
    for k, v in patch.items():
        if v is DELETE:
            expected.pop(k, None)
        else:
            expected[k] = v
    assert json.loads(out) == expected
    untouched = {k: v for k, v in original.items() if k not in patch}
    # Values the patch did not name are written exactly as before.
    for k, v in untouched.items():
        assert json.dumps(k) in out
        if indent is None:
            assert f"{json.dumps(k)}: {json.dumps(v)}" in out
