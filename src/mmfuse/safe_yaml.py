"""The one way mmfuse reads YAML: a size cap on the text and a node budget on what it expands to.

A few hundred bytes of nested anchors and aliases ("billion laughs") expand to billions of
nodes: PyYAML shares the aliased objects, but validating, copying or printing the value walks
every one of them (minutes and gigabytes). The loader below counts nodes as it composes them,
an alias counting as everything it stands for, and stops at the budget before any value is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

MAX_BYTES = 1 << 20  # a config is a few kB; a model's config.yaml too
MAX_NODES = 100_000  # a config is a few hundred nodes, aliases expanded


class _BudgetLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document expanding to more than MAX_NODES nodes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to, once composed

    def _count(self, n: int) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise ConfigError(f"expands to more than {MAX_NODES} values (nested aliases?); refused")

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            target = self.anchors.get(self.peek_event().anchor)
            # An alias to a node still being composed (a recursive one) counts as one.
            self._count(self._sizes.get(id(target), 1))
            return super().compose_node(parent, index)
        self._count(1)
        start = self._nodes
        node = super().compose_node(parent, index)
        self._sizes[id(node)] = 1 + self._nodes - start
        return node


def load_yaml(text: str, origin: str = "YAML") -> Any:
    """The value of a YAML document; ConfigError naming `origin` if it is not valid or too big."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{origin}: {len(text)} characters, more than the {MAX_BYTES} a config may have")
    loader = _BudgetLoader(text)
    try:
        return loader.get_single_data()
    except ConfigError as error:
        raise ConfigError(f"{origin}: {error}") from None
    except yaml.YAMLError as error:
        # PyYAML's message spans lines (with a snippet of the text): one line, cut short.
        raise ConfigError(f"{origin}: not valid YAML: {' '.join(str(error).split())[:300]}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """load_yaml of a file, refusing one over MAX_BYTES before reading it whole."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)  # bounded even for a FIFO or a device
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than the {MAX_BYTES} bytes a config may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {error.start})") from None
    return load_yaml(text, str(path))
