"""A strict parser for the block-YAML subset docker-compose.yml is written in.

PyYAML is not a dependency of the project, and no Docker engine runs in CI, so the compose file
is parsed here. The subset: block mappings, block sequences of scalars or of nested blocks,
plain / "double" / 'single' quoted scalars, comments, blank lines. Everything else (flow
collections, anchors, aliases, tags, block scalars, multi-document streams, `- key: value`
items) is refused with the line number, rather than read differently than Docker would.
Plain scalars that YAML 1.1 and 1.2 read differently (yes/no/on/off, octal-looking numbers)
are refused too: quote them.

When PyYAML is importable, tests compare this parser's result with `yaml.safe_load`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class YamlSubsetError(ValueError):
    pass


@dataclass
class _Line:
    number: int
    indent: int
    text: str  # without indentation and comment


_AMBIGUOUS = {"yes", "no", "on", "off", "y", "n"}
_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
# Octal, hex, floats (YAML 1.1's pattern), base 60: read differently by YAML 1.1 and 1.2.
_NUMBERISH = re.compile(
    r"[-+]?(0[0-7_]+|0o[0-7]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*\.[0-9_]*([eE][-+]?[0-9]+)?"
    r"|\.[0-9][0-9_]*([eE][-+]?[0-9]+)?"
    r"|\.(inf|Inf|INF|nan|NaN|NAN)|[0-9][0-9_]*(:[0-9]+)+)"
)
_KEY = re.compile(r"""(?P<key>"[^"]*"|'[^']*'|[^\s'"#][^:#]*?)\s*:(?:\s+(?P<rest>.*)|$)""")


def _strip_comment(text: str, number: int) -> str:
    quote: str | None = None
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'" and (index == 0 or text[index - 1] in " :-\t"):
            quote = char
        elif char == "#" and (index == 0 or text[index - 1] in " \t"):
            return text[:index].rstrip()
    if quote:
        raise YamlSubsetError(f"line {number}: unterminated quote")
    return text.rstrip()


def _lines(source: str) -> list[_Line]:
    lines = []
    for number, raw in enumerate(source.splitlines(), start=1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError(f"line {number}: tab in indentation")
        stripped = raw.lstrip(" ")
        if stripped in ("---", "...") or stripped.startswith(("--- ", "%")):
            raise YamlSubsetError(f"line {number}: document markers/directives not supported")
        text = _strip_comment(stripped, number)
        if text:
            lines.append(_Line(number, len(raw) - len(stripped), text))
    return lines


def scalar(text: str, number: int) -> Any:
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2:
            raise YamlSubsetError(f"line {number}: bad double-quoted scalar {text!r}")
        body = text[1:-1]
        if re.search(r'(?<!\\)"', body):
            raise YamlSubsetError(f"line {number}: text after a quoted scalar: {text!r}")
        return body.replace('\\"', '"').replace("\\\\", "\\")
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise YamlSubsetError(f"line {number}: bad single-quoted scalar {text!r}")
        return text[1:-1].replace("''", "'")
    if text[0] in "[{&*!|>%@`":
        raise YamlSubsetError(f"line {number}: {text[0]!r} (flow, anchor, tag, block) refused")
    if ": " in text or text.endswith(":"):
        raise YamlSubsetError(f"line {number}: nested mapping on one line: {text!r}")
    lowered = text.lower()
    if lowered in _AMBIGUOUS:
        raise YamlSubsetError(f"line {number}: quote {text!r} (YAML 1.1 reads it as a bool)")
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "~"):
        return None
    if _INT.fullmatch(text):
        return int(text)
    if _NUMBERISH.fullmatch(text):
        raise YamlSubsetError(f"line {number}: quote {text!r} (number forms differ by version)")
    return text


def _key(text: str, number: int) -> tuple[str, str | None] | None:
    match = _KEY.fullmatch(text)
    if not match:
        return None
    key = match.group("key")
    if key.startswith(("'", '"')):
        key = scalar(key, number)
    rest = match.group("rest")
    return key, (rest if rest else None)


def _block(lines: list[_Line], start: int, indent: int) -> tuple[Any, int]:
    """Parse the block whose lines start at `start` with exactly `indent`; (value, next)."""
    first = lines[start]
    if first.text == "-" or first.text.startswith("- "):
        return _sequence(lines, start, indent)
    return _mapping(lines, start, indent)


def _child(lines: list[_Line], index: int, parent_indent: int) -> tuple[Any, int]:
    """The nested block after a `key:` or `-` line (None if there is none)."""
    if index < len(lines) and lines[index].indent > parent_indent:
        return _block(lines, index, lines[index].indent)
    return None, index


def _mapping(lines: list[_Line], index: int, indent: int) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    while index < len(lines) and lines[index].indent == indent:
        line = lines[index]
        if line.text.startswith("- ") or line.text == "-":
            raise YamlSubsetError(f"line {line.number}: sequence item inside a mapping")
        parsed = _key(line.text, line.number)
        if parsed is None:
            raise YamlSubsetError(f"line {line.number}: expected `key: value`, got {line.text!r}")
        key, rest = parsed
        if key in result:
            raise YamlSubsetError(f"line {line.number}: duplicate key {key!r}")
        index += 1
        if rest is None:
            result[key], index = _child(lines, index, indent)
        else:
            result[key] = scalar(rest, line.number)
            if index < len(lines) and lines[index].indent > indent:
                raise YamlSubsetError(f"line {lines[index].number}: unexpected indentation")
    if index < len(lines) and lines[index].indent > indent:
        raise YamlSubsetError(f"line {lines[index].number}: unexpected indentation")
    return result, index


def _sequence(lines: list[_Line], index: int, indent: int) -> tuple[list[Any], int]:
    result: list[Any] = []
    while index < len(lines) and lines[index].indent == indent:
        line = lines[index]
        if not (line.text.startswith("- ") or line.text == "-"):
            raise YamlSubsetError(f"line {line.number}: mapping key inside a sequence")
        item = line.text[1:].strip()
        index += 1
        if not item:
            value, index = _child(lines, index, indent)
            result.append(value)
            continue
        if _key(item, line.number) is not None:
            raise YamlSubsetError(f"line {line.number}: `- key: value` items not supported")
        result.append(scalar(item, line.number))
        if index < len(lines) and lines[index].indent > indent:
            raise YamlSubsetError(f"line {lines[index].number}: unexpected indentation")
    return result, index


def load(source: str) -> Any:
    lines = _lines(source)
    if not lines:
        return None
    if lines[0].indent != 0:
        raise YamlSubsetError(f"line {lines[0].number}: document must start at column 0")
    value, index = _block(lines, 0, 0)
    if index != len(lines):
        raise YamlSubsetError(f"line {lines[index].number}: unexpected dedent or content")
    return value
