"""Fibers: which degrees a feature set carries and how many channels each has.

Features are dicts ``{degree: Tensor[N, channels, 2 * degree + 1]}``.
"""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, Mapping, Tuple

import torch
from torch import Tensor


def degree_to_dim(degree: int) -> int:
    """Dimension of the irreducible representation of SO(3) of this degree."""
    return 2 * degree + 1


class Fiber:
    """An ordered, immutable mapping ``degree -> channels`` (degrees sorted ascending)."""

    def __init__(self, structure: Mapping[int, int] | Iterable[Tuple[int, int]]):
        items = dict(structure)
        for degree, channels in items.items():
            if int(degree) < 0 or int(channels) <= 0:
                raise ValueError(f"Fiber needs degree >= 0 and channels > 0, got {degree}: {channels}")
        self._structure = {int(d): int(items[d]) for d in sorted(items)}

    @classmethod
    def create(cls, num_degrees: int, num_channels: int) -> "Fiber":
        """Degrees ``0 .. num_degrees - 1``, each with ``num_channels`` channels."""
        return cls({d: num_channels for d in range(num_degrees)})

    @property
    def degrees(self) -> list[int]:
        return list(self._structure)

    @property
    def channels(self) -> list[int]:
        return list(self._structure.values())

    @property
    def num_features(self) -> int:
        """Size of all features of one node flattened and concatenated."""
        return sum(c * degree_to_dim(d) for d, c in self._structure.items())

    @property
    def unique_channels(self) -> int | None:
        """The channel count if all degrees share it, else ``None``."""
        values = set(self._structure.values())
        return values.pop() if len(values) == 1 else None

    def __getitem__(self, degree: int) -> int:
        return self._structure.get(degree, 0)

    def __contains__(self, degree: int) -> bool:
        return degree in self._structure

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        return iter(self._structure.items())

    def __len__(self) -> int:
        return len(self._structure)

    def __add__(self, other: "Fiber") -> "Fiber":
        """Union of degrees; channels add up where both fibers have the degree."""
        merged = dict(self._structure)
        for d, c in other:
            merged[d] = merged.get(d, 0) + c
        return Fiber(merged)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fiber) and self._structure == other._structure

    def __repr__(self) -> str:
        return f"Fiber({self._structure})"


def unfuse_features(features: Tensor, degrees: Iterable[int]) -> Dict[int, Tensor]:
    """Split ``[..., C, sum(2d+1)]`` back into ``{d: [..., C, 2d+1]}`` (views, no copy)."""
    degrees = list(degrees)
    parts = torch.split(features, [degree_to_dim(d) for d in degrees], dim=-1)
    return dict(zip(degrees, parts))
