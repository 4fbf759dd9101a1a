"""The optimizer update of a network's many small arrays as one: those leaves packed into a vector.

The score networks' params have ~560 leaves, ~430 of them at most 64Ki elements (biases,
GroupNorm scales, the time embedding's projections), 11 MiB together. XLA compiles clipping,
Adam, the EMA and the finite check into a few fused kernels per leaf, 80-116 HLO instructions
each, and on CPU an executable's host memory grows with its instruction count: XLA keeps the
optimised module and its analyses, and the compiler leaves the heap fragmented around them
(the DDPM++ cont. update alone, 65k instructions: 175 MiB live per glibc's statistics, and
~100 MiB more resident in free fragments). `SmallLeaves` packs those leaves into one vector per
dtype for the update, so they cost one set of kernels: the DDPM++ cont. train step has 145k ->
103k instructions, and its process holds 50 MiB less once it is compiled.

Only for updates that treat every element alike, apart from global reductions (the norm of
clipping by global norm, the finite check): a per-leaf statistic (a trust ratio, a per-layer
norm) would be taken over the packed vector instead.

The packed vectors pass through `fusion.boundary`: after the update, else XLA fuses the update
into every slice back, one kernel per leaf again (the DDPM++ cont. update alone: 49k instead of
23k instructions, 65k per leaf, and compiled in 42 s instead of 11 s); before it, so that the
concatenation is made once and not inside each consumer. CPU only by default, like `boundary`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from models import fusion

MAX_SIZE = 65536  # elements: larger leaves have kernels of their own (their copies would cost)


class Packed(NamedTuple):
    """A packed tree: one vector per dtype of the small leaves, then the other leaves in order."""

    small: tuple
    big: tuple


class SmallLeaves:
    """Packs trees shaped like `like` (a params tree): leaves of at most `max_size` elements
    become one vector per dtype. Disabled (`enabled=False`, or None off the CPU backend) or with
    fewer than two small leaves, `pack` and `unpack` return the tree as it is."""

    def __init__(self, like, max_size: int = MAX_SIZE, enabled: bool | None = None):
        leaves, self.treedef = jax.tree.flatten(like)
        self.shapes = [jnp.shape(x) for x in leaves]
        self.groups: dict[Any, list[int]] = {}
        for i, x in enumerate(leaves):
            if math.prod(self.shapes[i]) <= max_size:
                self.groups.setdefault(jnp.result_type(x), []).append(i)
        packed = sum(len(g) for g in self.groups.values())
        self.enabled = fusion.default_enabled(enabled) and packed >= 2
        in_groups = {i for g in self.groups.values() for i in g}
        self.big = [i for i in range(len(leaves)) if i not in in_groups]

    def matches(self, tree) -> bool:
        """Whether `tree` has `like`'s structure and shapes (a params-shaped part of an
        optimizer state)."""
        leaves, treedef = jax.tree.flatten(tree)
        return treedef == self.treedef and [jnp.shape(x) for x in leaves] == self.shapes

    def pack(self, tree):
        if not self.enabled:
            return tree
        leaves = self.treedef.flatten_up_to(tree)
        small = tuple(
            fusion.boundary(jnp.concatenate([jnp.ravel(leaves[i]) for i in group]), True)
            for group in self.groups.values()
        )
        return Packed(small, tuple(leaves[i] for i in self.big))

    def unpack(self, packed):
        if not self.enabled:
            return packed
        leaves: list = [None] * len(self.shapes)
        for vector, group in zip(packed.small, self.groups.values()):
            vector, start = fusion.boundary(vector, True), 0
            for i in group:
                size = math.prod(self.shapes[i])
                leaves[i] = vector[start : start + size].reshape(self.shapes[i])
                start += size
        for i, x in zip(self.big, packed.big):
            leaves[i] = x
        return self.treedef.unflatten(leaves)

    def pack_within(self, tree):
        """`tree` (an optimizer state) with each of its params-shaped parts packed."""
        if not self.enabled:
            return tree
        return jax.tree.map(
            lambda x: self.pack(x) if self.matches(x) else x, tree, is_leaf=self.matches
        )

    def unpack_within(self, tree):
        if not self.enabled:
            return tree
        is_packed = lambda x: isinstance(x, Packed)  # noqa: E731
        return jax.tree.map(
            lambda x: self.unpack(x) if is_packed(x) else x, tree, is_leaf=is_packed
        )
