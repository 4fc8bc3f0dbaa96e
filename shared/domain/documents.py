"""What rules and playbooks files have in common: a YAML mapping, versioned by content."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from yaml.constructor import ConstructorError
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode

# Far beyond any real file, far below what exhausts memory or the stack: an alias expands
# to a copy of what it names wherever it is read, so a few lines can name 10^9 values.
MAX_DEPTH = 128
MAX_VALUES = 100_000
# Read before any parsing: PyYAML builds the whole node tree before the count above, and a
# 27 MB file took 1.5 GB and 39 s to be refused (a larger one was killed for memory).
MAX_BYTES = 8 * 1024 * 1024
_MERGE = "tag:yaml.org,2002:merge"


def read_document(path: str | Path, *, fail: Callable[[str], Exception]) -> str:
    """The file's text; `fail(reason)` builds the error for a file unread, over MAX_BYTES or
    not UTF-8."""
    try:
        with Path(path).open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror}") from exc
    if len(raw) > MAX_BYTES:
        raise fail(f"larger than {MAX_BYTES // (1024 * 1024)} MiB: not a rules or playbooks file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise fail(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line}") from exc


def yaml_mapping(
    text: str, *, fail: Callable[[str], Exception], name: str = "<document>"
) -> dict[str, Any]:
    """The document as a mapping; `fail(reason)` builds the error to raise otherwise. YAML's
    errors name `name` (the file) and are folded onto one line."""
    loader = _StrictLoader(text)
    loader.name = name  # PyYAML's marks said "<unicode string>"
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded_size(node, depth=0, seen={}, fail=fail)
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise fail(f"not valid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError as exc:  # the parser itself recurses per level
        raise fail(f"not valid YAML: nested more than {MAX_DEPTH} levels deep") from exc
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise fail("the file must be a YAML mapping")
    return data


def line_of(text: str, loc: Sequence[str | int]) -> int | None:
    """The line (from 1) where the value at `loc` (mapping keys and list indexes, as a
    validation error names it) starts in the document, or where the deepest part of it that
    exists does: a schema error then points into a long file. None if it cannot be read."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        found = _child(node, part)
        if found is None:
            continue  # a name the schema adds (a union member's tag): the value is the same
        node, line = found, found.start_mark.line + 1
    return line


def _child(node: Node, part: str | int) -> Node | None:
    if isinstance(node, MappingNode):
        return next((value for key, value in node.value
                     if isinstance(key, ScalarNode) and key.value == str(part)), None)  # fmt: skip
    if isinstance(node, CollectionNode) and isinstance(part, int) and 0 <= part < len(node.value):
        child: Node = node.value[part]
        return child
    return None


def content_version(parsed: BaseModel) -> str:
    """A hash of the validated content: comments and key order do not change it."""
    canonical = json.dumps(parsed.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that reads plain scalars by the YAML 1.2 core schema, and refuses a key
    given twice in one mapping: PyYAML silently keeps the last, so a rule edited in two
    places would quietly lose one of the edits.

    PyYAML implements YAML 1.1, whose implicit types surprise people writing rules: `NO` (a
    country) and `off` read as false, `yes` as true, `01067` (a postal code) as the octal
    567, `1:30` as 90, and `1e5` stays text. YAML 1.2's core schema: true / false in three
    spellings, null, `~`, integers (`0o` octal, `0x` hexadecimal), floats with an optional
    exponent, .inf and .nan; anything else is text. `<<` merge keys stay.
    """

    yaml_implicit_resolvers = {}  # its own, not SafeLoader's: filled from _CORE_SCHEMA below

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:  # `<<: *base`: later keys override it on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"found key {key!r} twice (first on line {first[key]})",
                        key_node.start_mark,
                    )  # fmt: skip
                first[key] = line
            except TypeError:  # an unhashable key: the constructor below says so
                break
        return super().construct_mapping(node, deep=deep)


def _expanded_size(
    node: Node, *, depth: int, seen: dict[int, tuple[int, int]], fail: Callable[[str], Exception]
) -> tuple[int, int]:
    """How many values `node` holds once every alias is copied out, and how many levels
    deep it goes (memoised per node: an alias names a node already measured)."""
    if depth > MAX_DEPTH:  # before recursing further
        raise fail(f"not valid YAML: nested more than {MAX_DEPTH} levels deep")
    if (known := seen.get(id(node))) is None:
        size, height = 1, 0
        if isinstance(node, CollectionNode):
            children = (
                [n for pair in node.value for n in pair] if isinstance(node, MappingNode)
                else node.value
            )  # fmt: skip
            for child in children:
                child_size, child_height = _expanded_size(
                    child, depth=depth + 1, seen=seen, fail=fail
                )
                size, height = size + child_size, max(height, child_height + 1)
                if size > MAX_VALUES:
                    raise fail(
                        f"not valid YAML: more than {MAX_VALUES:,} values (an alias counts"
                        " as all the values it names)"
                    )
        seen[id(node)] = known = (size, height)
    if depth + known[1] > MAX_DEPTH:
        raise fail(f"not valid YAML: nested more than {MAX_DEPTH} levels deep")
    return known


def _construct_bool(loader: _StrictLoader, node: ScalarNode) -> bool:
    text = loader.construct_scalar(node)
    if text.lower() not in ("true", "false"):  # an explicit `!!bool yes`
        raise ConstructorError(None, None, f"{text!r} is not true or false", node.start_mark)
    return text.lower() == "true"


def _construct_int(loader: _StrictLoader, node: ScalarNode) -> int:
    text = loader.construct_scalar(node)
    base, digits = {"0o": (8, text[2:]), "0x": (16, text[2:])}.get(text[:2], (10, text))
    try:  # an explicit `!!int` may tag anything
        return int(digits, base)
    except ValueError:
        raise ConstructorError(None, None, f"{text!r} is not an integer", node.start_mark) from None


def _construct_float(loader: _StrictLoader, node: ScalarNode) -> float:
    text = loader.construct_scalar(node)
    special = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
    try:  # an explicit `!!float` may tag anything
        return special[text.lower()] if text.lower() in special else float(text)
    except ValueError:
        raise ConstructorError(None, None, f"{text!r} is not a number", node.start_mark) from None


# The YAML 1.2 core schema's tag resolution (yaml.org/spec/1.2.2, 10.3.2), in PyYAML's terms:
# (tag, pattern, the characters a matching scalar can begin with). Integers before floats.
_CORE_SCHEMA = (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^[-+]?[0-9]+$", "-+0123456789"),
    ("int", r"^0o[0-7]+$", "0"),
    ("int", r"^0x[0-9a-fA-F]+$", "0"),
    ("float", r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$", "-+0123456789."),
    ("float", r"^[-+]?(?:\.inf|\.Inf|\.INF)$", "-+."),
    ("float", r"^(?:\.nan|\.NaN|\.NAN)$", "."),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("merge", r"^<<$", "<"),
)
for _tag, _pattern, _first in _CORE_SCHEMA:
    _StrictLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first)
    )
_StrictLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
