"""Candidate continuations packed into one sequence: a token trie, so shared prefixes run once and nothing pads.

Scoring ``n`` candidate lines after one prompt as a padded batch runs ``n x longest`` positions, repeats the
prompt's KV cache ``n`` times and computes the full vocabulary at every position. Packed, each distinct prefix of
a line is one position (``1. "The ...`` lines share their first tokens), every position attends to the prompt
and to its own ancestors only (a tree attention mask), and the vocabulary is computed only at positions that
predict a scored token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedLines:
    """The trie of a group of continuations, nodes in creation order (a parent precedes its children).

    ``tokens[i]``: node ``i``'s token; ``parents[i]``: its parent node, ``-1`` for a line's first token (predicted by
    the prompt's last position); ``depths[i]``: its distance from the prompt (0 for a first token); ``paths[j]``: the
    nodes of continuation ``j`` in order.
    """

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    paths: list[list[int]]

    @classmethod
    def build(cls, continuations: Sequence[Sequence[int]]) -> PackedLines:
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        children: dict[tuple[int, int], int] = {}
        paths = []
        for line in continuations:
            node, path = -1, []
            for depth, token in enumerate(line):
                key = (node, int(token))
                if key not in children:
                    children[key] = len(tokens)
                    tokens.append(int(token))
                    parents.append(node)
                    depths.append(depth)
                node = children[key]
                path.append(node)
            paths.append(path)
        return cls(tokens, parents, depths, paths)

    def __len__(self) -> int:
        return len(self.tokens)

    def tree_mask(self) -> torch.Tensor:
        """``len x len`` booleans: node ``i`` may attend to node ``j`` (``j`` is ``i`` or one of its ancestors)."""
        size = len(self.tokens)
        mask = torch.zeros((size, size), dtype=torch.bool)
        for node, parent in enumerate(self.parents):
            if parent >= 0:
                mask[node] = mask[parent]
            mask[node, node] = True
        return mask

    def inner_nodes(self) -> list[int]:
        """The nodes that have a child: the only positions whose next-token distribution is needed."""
        return sorted({parent for parent in self.parents if parent >= 0})


def group_by_tokens(continuations: Sequence[Sequence[int]], budget: int) -> list[range]:
    """Consecutive ranges of ``continuations`` of at most ``budget`` tokens each (a line longer than the budget is
    a group of its own): bounds the attention mask and activations of one packed forward pass."""
    groups, start, total = [], 0, 0
    for index, line in enumerate(continuations):
        if total and total + len(line) > budget:
            groups.append(range(start, index))
            start, total = index, 0
        total += len(line)
    if start < len(continuations):
        groups.append(range(start, len(continuations)))
    return groups
