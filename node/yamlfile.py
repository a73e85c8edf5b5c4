"""Strict reading of the YAML files operators write by hand (consortium file, node.yaml).

:func:`load_yaml_file` parses with PyYAML's safe loader (no tag constructs a Python object)
and refuses, with :class:`YamlFileError` naming the cause and the line:

* a file larger than ``max_bytes`` (read bounded: a wrong path to a log or an image must not
  take minutes of pure-Python parsing) or not UTF-8 text;
* a key given twice in one mapping (YAML keeps the last one silently: a second ``batch:``
  or ``port:`` further down would quietly win);
* an alias (``*name``): aliases let a few lines expand into billions of nodes ("billion
  laughs") the moment a value is printed or walked, and hand-written configurations of this
  project have no use for them (an anchor without aliases is harmless and accepted);
* nesting deeper than the parser's recursion allows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

MAX_CONFIG_BYTES = 4 << 20  # the sample consortium file is ~4 KiB, a node.yaml ~1 KiB
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(ValueError):
    """A configuration file that cannot be read as strict YAML (the message says why)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and duplicate mapping keys."""

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ComposerError(None, None, f"found alias *{event.anchor}: YAML aliases are not allowed "
                                            f"in rxchain configuration files", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class refuses it
                continue
            if duplicate:
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_yaml_file(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """The document of ``path`` (YamlFileError if it breaks a rule of the module docstring;
    OSError if it cannot be read)."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise YamlFileError(f"larger than {max_bytes} bytes: not a configuration file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlFileError(f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:  # one line: what, then where
        where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})" \
            if exc.problem_mark else ""
        context = f"{exc.context}: " if exc.context else ""
        raise YamlFileError(f"{context}{exc.problem}{where}") from None
    except yaml.YAMLError as exc:
        raise YamlFileError(" ".join(str(exc).split())) from None
    except RecursionError:
        raise YamlFileError("nested too deeply") from None
