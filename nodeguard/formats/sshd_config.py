"""sshd_config as sshd reads it: Include (globs relative to /etc/ssh), Match blocks, first value wins.

sshd takes the *first* value it reads for a keyword, so a drop-in included at the top of
sshd_config (Debian's `Include /etc/ssh/sshd_config.d/*.conf`) beats the main file. Lines after a
`Match` apply only to connections that match, until the next `Match` or the end of the file that
holds it (an included file's Match does not leak back into the including file); `Match all`
applies to every connection and overrides the global value, like any matching block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nodeguard.host import expand_glob

SSH_DIR = "/etc/ssh"
MAX_INCLUDE_DEPTH = 16  # sshd's SERVCONF_MAX_DEPTH
# Files parsed per configuration: a file that includes itself three times would otherwise be
# parsed 3**16 times before the depth limit stops it (found by the fuzz tests).
MAX_INCLUDED_FILES = 256

# OpenSSH defaults (sshd_config(5)) for the keywords nodeguard judges.
DEFAULTS = {
    "passwordauthentication": "yes",
    "pubkeyauthentication": "yes",
    "permitrootlogin": "prohibit-password",
}


@dataclass(frozen=True)
class Setting:
    keyword: str  # lower case
    value: str  # first argument, as written
    file: str
    line: int
    match: str | None  # the Match criteria it sits under, None when global


@dataclass
class SshdConfig:
    settings: list[Setting] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def global_setting(self, keyword: str) -> Setting | None:
        """The value every connection gets unless a narrower Match says otherwise."""
        key = keyword.lower()
        # A `Match all` block matches every connection and overrides the global section.
        for s in self.settings:
            if s.keyword == key and s.match is not None and s.match.lower() == "all":
                return s
        return next((s for s in self.settings if s.keyword == key and s.match is None), None)

    def effective(self, keyword: str) -> str:
        s = self.global_setting(keyword)
        return s.value if s is not None else DEFAULTS.get(keyword.lower(), "")

    def match_overrides(self, keyword: str) -> list[Setting]:
        key = keyword.lower()
        return [s for s in self.settings if s.keyword == key and s.match is not None and s.match.lower() != "all"]


def split_args(text: str) -> list[str]:
    """sshd's argv_split: whitespace-separated, double quotes group, a word starting with # ends the line."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] == "#":
            break
        word = []
        quoted = False
        while i < n and (quoted or text[i] not in " \t"):
            ch = text[i]
            if ch == '"':
                quoted = not quoted
            elif ch == "\\" and i + 1 < n and text[i + 1] in '"\\ ':
                i += 1
                word.append(text[i])
            else:
                word.append(ch)
            i += 1
        out.append("".join(word))
    return out


def split_line(line: str) -> tuple[str, list[str]] | None:
    """`Keyword value`, `Keyword=value` or `Keyword = value` -> (keyword, args); None for blanks/comments."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    end = 0
    while end < len(text) and text[end] not in " \t=":
        end += 1
    keyword, rest = text[:end], text[end:].lstrip(" \t")
    if rest.startswith("="):
        rest = rest[1:]
    return keyword.lower(), split_args(rest)


def parse(read: Callable[[str], str | None], list_dir: Callable[[str], list[str]],
          path: str = f"{SSH_DIR}/sshd_config") -> SshdConfig:
    """Parse `path` and what it includes. `read(path)` returns text or None (missing); `list_dir` names a folder."""
    cfg = SshdConfig()
    _parse_file(cfg, read, list_dir, path, None, 0)
    return cfg


def expand(pattern: str, list_dir: Callable[[str], list[str]]) -> list[str]:
    """One Include argument -> files, sorted per component like glob(3); relative to /etc/ssh."""
    if not pattern.startswith("/"):
        pattern = f"{SSH_DIR}/{pattern}"
    return expand_glob(pattern, list_dir)


def _parse_file(cfg: SshdConfig, read: Callable[[str], str | None], list_dir: Callable[[str], list[str]],
                path: str, match: str | None, depth: int) -> None:
    seen = len(cfg.files) + len(cfg.problems)
    if seen >= MAX_INCLUDED_FILES:
        if seen == MAX_INCLUDED_FILES:
            cfg.problems.append(f"{path}: more than {MAX_INCLUDED_FILES} included files: the rest is ignored")
        return
    if depth > MAX_INCLUDE_DEPTH:
        cfg.problems.append(f"{path}: Include nested deeper than {MAX_INCLUDE_DEPTH}: ignored (sshd refuses to start)")
        return
    text = read(path)
    if text is None:
        if depth == 0:
            return
        cfg.problems.append(f"{path}: included but missing")
        return
    cfg.files.append(path)
    current = match  # an included file starts in the context of its Include line
    for lineno, raw in enumerate(text.splitlines(), 1):
        parsed = split_line(raw)
        if parsed is None:
            continue
        keyword, args = parsed
        if keyword == "match":
            current = " ".join(args) or "all"
            continue
        if keyword == "include":
            for pattern in args:
                is_glob = any(c in pattern for c in "*?[")
                files = expand(pattern, list_dir)
                for inc in files:
                    if is_glob and read(inc) is None:
                        continue
                    _parse_file(cfg, read, list_dir, inc, current, depth + 1)
            continue
        if args:
            cfg.settings.append(Setting(keyword, args[0], path, lineno, current))
