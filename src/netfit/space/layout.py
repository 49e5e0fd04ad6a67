"""Channel layouts and the union-find of channel groups that the tracer (``channels.py``, ``propagate.py``) builds.

A tensor's channel dim is described by segments ``(group id or None, channels, repeat)``. Groups are joined
(union-find) when layers must change together, and split into consecutive pieces when a finer layout of the
same channels meets them; ``resolve`` reads any recorded layout in terms of the current groups.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import torch

Seg = tuple[int | None, int, int]  # (group id or None, channels, repeat)


@dataclass(frozen=True)
class Member:
    """One module dimension that follows a channel group.

    Attributes:
        module: qualified module name (as in ``model.get_submodule``).
        role: "out" (conv out channels / linear out_features), "in" (conv in channels / linear in_features),
            "norm" (BatchNorm/InstanceNorm/LayerNorm/GroupNorm channels) or "dw" (depthwise conv: in and out).
        offset: where the group's channels start in that dimension (concatenation).
        repeat: consecutive features per channel (a flattened C x S map feeding a Linear has repeat S).
    """

    module: str
    role: str
    offset: int = 0
    repeat: int = 1

    def indices(self, channels: torch.Tensor) -> torch.Tensor:
        """Positions in the module dimension covered by ``channels`` (group-local indices) of the group."""
        channels = torch.as_tensor(channels, dtype=torch.long).reshape(-1, 1)
        return (self.offset + channels * self.repeat + torch.arange(self.repeat)).reshape(-1)


@dataclass
class Layout:
    """Channel layout of one tensor: channel dim and segments ``(group id or None, channels, repeat)``."""

    dim: int
    segs: list[Seg]

    @property
    def total(self) -> int:
        return sum(count * rep for _, count, rep in self.segs)


@dataclass
class Groups:
    """Union-find over channel groups with their members, flags and reasons.

    A group can also be SPLIT into consecutive pieces (new groups) when a finer layout of its channels meets it
    (a concatenation added to one conv's output): the old root is retired, ``pieces`` maps it to the new
    groups, and ``resolve`` rewrites any recorded segment of it into the pieces.
    """

    parent: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    prunable: list[bool] = field(default_factory=list)
    reasons: list[list[str]] = field(default_factory=list)
    members: list[list[tuple[float, Member]]] = field(default_factory=list)
    order: list[tuple[int, ...]] = field(default_factory=list)  # sort key: creation order, pieces after parents
    pieces: dict[int, list[int]] = field(default_factory=dict)  # retired root -> its pieces, in channel order
    seq: int = 0

    def new(self, size: int, reason: str = "", order: tuple[int, ...] | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.prunable.append(not reason)
        self.reasons.append([reason] if reason else [])
        self.members.append([])
        self.order.append((len(self.parent) - 1,) if order is None else order)
        return len(self.parent) - 1

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        a, b = sorted((self.find(a), self.find(b)), key=self.order.__getitem__)
        if a == b:
            return
        self.parent[b] = a
        self.prunable[a] = self.prunable[a] and self.prunable[b]
        self.reasons[a] += [r for r in self.reasons[b] if r not in self.reasons[a]]
        self.members[a] += self.members[b]
        if self.size[a] != self.size[b]:  # cannot happen for consistent shapes; stay safe
            self.block(a, f"channel counts {self.size[a]} and {self.size[b]} were joined")

    def block(self, gid: int, reason: str) -> None:
        for root, _, _ in self.resolve([(gid, self.size[gid], 1)]):
            self.prunable[root] = False
            if reason not in self.reasons[root]:
                self.reasons[root].append(reason)

    def add(self, gid: int, member: Member, after: float | None = None) -> float:
        """Record ``member`` in group ``gid``; ``after`` places it right behind that earlier member."""
        seq = self.seq if after is None else after + 0.5
        self.members[self.find(gid)].append((seq, member))
        self.seq += 1
        return seq

    def resolve(self, segs: list[Seg]) -> list[Seg]:
        """``segs`` with every group replaced by its root, and split groups by their pieces."""
        out: list[Seg] = []
        for gid, count, rep in segs:
            root = None if gid is None else self.find(gid)
            if root in self.pieces:
                out += self.resolve([(p, self.size[p], rep) for p in self.pieces[root]])
            else:
                out.append((root, count, rep))
        return out

    def split(self, gid: int, sizes: list[int]) -> None:
        """Replace group ``gid`` by consecutive pieces of ``sizes`` channels, each with a copy of every member
        (its offset moved to the piece's first channel), the same flag and reasons."""
        root, start = self.find(gid), 0
        assert root not in self.pieces and sum(sizes) == self.size[root]
        self.pieces[root] = []
        for i, n in enumerate(sizes):
            piece = self.new(n, order=(*self.order[root], i))
            self.prunable[piece], self.reasons[piece] = self.prunable[root], list(self.reasons[root])
            self.members[piece] = [
                (seq, replace(m, offset=m.offset + start * m.repeat)) for seq, m in self.members[root]
            ]
            self.pieces[root].append(piece)
            start += n
        self.members[root] = []

    def live(self, gid: int) -> bool:
        """A group of the result: a root that was not split."""
        return self.find(gid) == gid and gid not in self.pieces


def seg_span(segs: list[Seg]) -> int:
    return sum(count * rep for _, count, rep in segs)


def seg_edges(segs: list[Seg]) -> set[int]:
    """Feature positions where the segments start and end."""
    edges, pos = {0}, 0
    for _, count, rep in segs:
        pos += count * rep
        edges.add(pos)
    return edges


def seg_atoms(segs: list[Seg], cuts: set[int]) -> list[Seg]:
    """``segs`` cut at every position of ``cuts``: groups are not cut (the caller split them), untracked runs
    become one ``(None, features, 1)`` atom per interval."""
    atoms, start = [], 0
    for gid, count, rep in segs:
        end = start + count * rep
        if gid is not None:
            atoms.append((gid, count, rep))
        else:
            edges = [start, *sorted(p for p in cuts if start < p < end), end]
            atoms += [(None, hi - lo, 1) for lo, hi in itertools.pairwise(edges)]
        start = end
    return atoms


def seg_between(segs: list[Seg], lo: int, hi: int) -> list[Seg]:
    """The segments covering features [lo, hi), which are segment edges (untracked runs are cut as needed)."""
    out, start = [], 0
    for gid, count, rep in segs:
        end = start + count * rep
        if gid is not None and lo <= start and end <= hi:
            out.append((gid, count, rep))
        elif gid is None and max(lo, start) < min(hi, end):
            out.append((None, min(hi, end) - max(lo, start), 1))
        start = end
    return out
