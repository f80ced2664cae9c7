"""YAML that cannot blow up: PyYAML's SafeLoader with budgets on alias expansion and nesting depth."""

from __future__ import annotations

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent

# Aliases may make the document at most this many times bigger than what is written (with a floor, so a small
# file may still share a block a few hundred times). A `<<: *common` per job costs about 1×; an alias bomb
# (nine levels of nine aliases ≈ 3.9e8 nodes) is refused at its first few levels, before anything is built.
ALIAS_RATIO = 10
ALIAS_FLOOR = 10_000
# Deeper than any manifest needs; PyYAML composes recursively, so without a bound deep nesting is a RecursionError.
MAX_DEPTH = 64


class BudgetExceeded(ComposerError):
    """Valid YAML that would expand past a budget: refused before it is built."""


class BudgetLoader(yaml.SafeLoader):
    """Counts, while composing, how many nodes the aliases would expand to; refuses past the budget."""

    def __init__(self, stream):
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) → nodes it stands for, aliases expanded
        self._written = 0  # nodes written out in the text
        self._expanded = 0  # nodes that aliases add
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            self._expanded += self._sizes.get(id(node), 1)  # an alias to an unfinished ancestor counts 1
            budget = max(ALIAS_FLOOR, ALIAS_RATIO * self._written)
            if self._expanded > budget:
                raise BudgetExceeded(None, None, f"aliases (*name) expand this document past {budget} nodes "
                                    f"({ALIAS_RATIO}× what is written); write the values out, or share fewer", mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise BudgetExceeded(None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._written += 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = ()
        self._sizes[id(node)] = 1 + sum(self._sizes.get(id(c), 1) for c in children)
        return node


def compose_and_load(text: str):
    """(root node, Python data) of one YAML document, in one pass; raises yaml.YAMLError on bad or hostile YAML."""
    loader = BudgetLoader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def safe_load(text: str):
    """yaml.safe_load with the budgets above."""
    return compose_and_load(text)[1]
