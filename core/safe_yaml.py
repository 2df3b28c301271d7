"""YAML read with ``yaml.SafeLoader`` and bounded: size, nesting depth, aliases, expanded size, no duplicate keys.

``safe_load`` alone runs no code, but it keeps aliases shared, so a few hundred
bytes ("billion laughs") expand to gigabytes as soon as anything walks the
result, and deep nesting overflows the stack. Every YAML file aigc-kit reads (a
run config, a checkpoint's or a run directory's config) goes through
:func:`read`, which refuses such input with a :class:`UserError` before it is
expanded. This module does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from .errors import UserError

MAX_BYTES = 1 << 20
"""The largest YAML file read (1 MiB: a run config is a few kilobytes)."""
MAX_DEPTH = 32
"""The deepest nesting of mappings and lists."""
MAX_ALIASES = 100
"""The most aliases (``*name``) a document may use."""
MAX_NODES = 100_000
"""The most values the document may hold once its aliases are expanded."""


class _Refused(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nesting and aliases as it composes, and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} aliases", self.peek_event().start_mark)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable: SafeLoader's own error follows
            if key in seen:
                raise _Refused(f"the key {key!r} appears twice in one mapping (which one is meant?)",
                               key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` holds with every alias expanded (shared nodes counted once per use)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, SequenceNode):
        size += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, MappingNode):
        size += sum(_expanded_size(key, sizes) + _expanded_size(value, sizes) for key, value in node.value)
    sizes[id(node)] = size
    return size


def load(text: str, source: str | None = None) -> Any:
    """Parse one YAML document within the bounds above; a :class:`UserError` naming ``source`` otherwise."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader already refuses some characters
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES:,} values once its aliases are expanded")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"invalid YAML{where}: {problem}", file=source) from None
    finally:
        if loader is not None:
            loader.dispose()


def read(path: str | Path) -> Any:
    """Read and parse a YAML file within the bounds above (refusing a file over :data:`MAX_BYTES` unread)."""
    path = Path(path)
    if not path.exists():
        raise UserError("file not found", file=str(path), hint="check the path, relative to the working directory")
    if path.is_dir():
        raise UserError("expected a YAML file, found a folder", file=str(path))
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UserError(f"the file is {size:,} bytes; a YAML file read here may have at most {MAX_BYTES:,}",
                            file=str(path), hint="is this the right file? a run config is a few kilobytes")
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"not UTF-8 text (byte {exc.start})", file=str(path)) from None
    except OSError as exc:
        raise UserError(f"cannot read the file: {exc.strerror or exc}", file=str(path)) from None
    if len(data) > MAX_BYTES:  # it grew while being read
        raise UserError(f"the file has more than {MAX_BYTES:,} bytes", file=str(path))
    return load(text, str(path))
