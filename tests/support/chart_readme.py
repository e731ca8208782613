"""charts/nodeguard/README.md, generated from values.yaml: its comments are the documentation.

    .venv/bin/python -m tests.support.chart_readme          # rewrite the README
    .venv/bin/python -m tests.support.chart_readme --check  # exit 1 if the committed one is stale

The convention (the one helm-docs and Bitnami's readme-generator read, kept deliberately small):
the comment block right above a key, or the comment after it on the same line, describes that
key. Nested keys are named by their dotted path. Each key holding a scalar, a list or an empty
mapping is a row with its default; a mapping with a comment of its own is a row too, without a
default. Keys inside list items, and mappings with keys that are not plain names (labels such as
`kubernetes.io/os`), are part of their key's default, not rows.

The YAML parser gives the values; a line scan gives the comments, matched to keys by indentation.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "nodeguard"
README = CHART / "README.md"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")
_MISSING = object()

HEADER = """\
<!-- Generated from values.yaml by `python -m tests.support.chart_readme`: edit the comments there. -->
# nodeguard Helm chart

{description}

Kubernetes {kube_version}. The project's README ("On Kubernetes: the image and the Helm chart") says
what the pod mounts, which capabilities it keeps, exactly what its RBAC allows, what the metrics
endpoint opens and what SELinux-enforcing hosts need.

```sh
kubectl create namespace nodeguard
kubectl label namespace nodeguard pod-security.kubernetes.io/enforce=privileged
helm install nodeguard charts/nodeguard -n nodeguard --set image.repository=registry.example/nodeguard
```

As a dependency of an umbrella chart, `condition: nodeguard.enabled` works and Helm's `global`
values are accepted (and ignored). `values.schema.json` refuses any other unknown key.

## Values

| key | default | description |
|---|---|---|
"""


@dataclass
class Row:
    key: str
    default: str
    description: str


def _comment_of(line: str) -> str:
    """The comment after a value on the same line (`key: value  # comment`), if any."""
    m = re.search(r"\s#\s?(.*)$", line)
    return m.group(1).strip() if m else ""


def _lookup(values: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(values, dict) or part not in values:
            return _MISSING
        values = values[part]
    return values


def _default(value: Any) -> str:
    if isinstance(value, dict) and not value:
        return "`{}`"
    text = json.dumps(value, separators=(", ", ": "))
    return f"`{text}`"


def _cell(text: str) -> str:
    # Markdown would take `<file>` for an HTML tag; the generator's own line breaks stay tags.
    return text.replace("<", "&lt;").replace("&lt;br>", "<br>").replace("|", "\\|").strip()


def rows(values_text: str) -> list[Row]:
    values = yaml.safe_load(values_text)
    out: list[Row] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings the current line is inside
    comment: list[str] = []
    for line in values_text.splitlines():
        stripped = line.strip()
        if not stripped:
            comment = []  # a blank line ends a block: a section's comment is not its first key's
            continue
        if stripped.startswith("#"):
            raw = stripped[1:].removeprefix(" ")
            # An indented comment line is an item of a list inside the comment: its own line.
            comment.append(("<br>" if raw[:1].isspace() else "") + " ".join(raw.split()))
            continue
        m = _KEY.match(line)
        if m is None:  # a list item or a continuation: part of its key's default
            comment = []
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [m.group("key")]
        value = _lookup(values, path)
        text = " ".join(c for c in [*comment, _comment_of(line)] if c)
        comment = []
        if value is _MISSING:  # a key inside a list item
            continue
        if isinstance(value, dict) and value and all(_KEY.match(f"{k}: ") for k in value):
            stack.append((indent, m.group("key")))
            if text:
                out.append(Row(".".join(path), "", text))
            continue
        out.append(Row(".".join(path), _default(value), text))
    return out


def render() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    text = HEADER.format(description=" ".join(chart["description"].split()), kube_version=chart["kubeVersion"])
    for row in rows((CHART / "values.yaml").read_text()):
        text += f"| `{row.key}` | {_cell(row.default)} | {_cell(row.description)} |\n"
    return text


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if README.read_text() != text:
            print(f"{README} is stale: run python -m tests.support.chart_readme", file=sys.stderr)
            return 1
        return 0
    README.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
