"""The channel-group propagation behind ``channels.trace_channel_groups``: one walk over a traced fx graph that
gives every tensor a ``Layout`` and joins, splits or blocks channel groups by what each node does to channels
(layers, elementwise ops, concatenation, reshapes, reductions, splits)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch.fx as fx
from torch import nn

from .layers import BATCH_NORMS, CONVS, INSTANCE_NORMS
from .layout import Groups, Layout, Member, Seg, seg_atoms, seg_between, seg_edges, seg_span

# Parameter-free modules that keep the channel count but reorder or mix channels.
_MIXING_MODULES = (nn.ChannelShuffle, nn.Softmax, nn.LogSoftmax, nn.Softmax2d, nn.Softmin)
_MIXING_OPS = {"softmax", "log_softmax", "softmin", "cumsum", "cumprod", "flip", "roll", "sort", "argsort"}
_MIXING_OPS |= {"channel_shuffle", "native_channel_shuffle", "gather", "index_select", "take_along_dim"}
_BINARY_OPS = {"add", "sub", "mul", "truediv", "div", "floordiv", "rsub", "maximum", "minimum"}
_BINARY_OPS |= {f"{op}_" for op in _BINARY_OPS} | {f"i{op}" for op in _BINARY_OPS}
_RESHAPE_OPS = {"view", "reshape", "flatten", "squeeze", "unsqueeze"}
_REDUCE_OPS = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "nansum", "nanmean"}
_SPLIT_DIM_ARG = {"split": 2, "chunk": 2, "tensor_split": 2, "unbind": 1}


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _op_name(node: fx.Node) -> str:
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return name.strip("_") if name.startswith("__") else name


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


class Propagator:
    """Walks the traced graph once, in topological order, assigning a ``Layout`` (or None) to every node."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.g = Groups()
        self.env: dict[fx.Node, Any] = {}
        self.seen_input = False
        self.made_at: dict[int, float] = {}  # id(Layout) of a fresh conv/linear output -> its "out" member seq
        self.called: dict[tuple[str, str], list[Seg]] = {}  # (module, role) -> the channels it saw first

    def run(self) -> Groups:
        for node in self.gm.graph.nodes:
            self.env[node] = self.visit(node)
        return self.g

    # ---- helpers -------------------------------------------------------------------------------------
    def block(self, chan: Any, reason: str) -> None:
        if isinstance(chan, list):
            for item in chan:
                self.block(item, reason)
        elif isinstance(chan, Layout):
            for gid, _, _ in chan.segs:
                if gid is not None:
                    self.g.block(gid, reason)

    def add_members(self, chan: Layout, module: str, role: str) -> None:
        if (module, role) in self.called:  # a module called twice: both calls see the same channels
            reason = f"module '{module}' is called on tensors whose channels are laid out differently"
            self.equate(self.called[(module, role)], chan.segs, reason)
            return
        self.called[(module, role)] = chan.segs
        # a norm applied straight to a producer's output is listed right after it (l1_importance pairs them)
        after = self.made_at.get(id(chan)) if role == "norm" else None
        offset = 0
        for gid, count, rep in self.g.resolve(chan.segs):
            if gid is not None:
                self.g.add(gid, Member(module, role, offset, rep), after)
            offset += count * rep

    def new_chan(self, dim: int, size: int, module: str, reason: str = "") -> Layout:
        if (module, "out") in self.called:  # a module called twice makes the same channels
            chan = Layout(dim, self.called[(module, "out")])
            if reason:
                self.block(chan, reason)
            return chan
        gid = self.g.new(size, reason)
        chan = Layout(dim, [(gid, size, 1)])
        self.called[(module, "out")] = chan.segs
        self.made_at[id(chan)] = self.g.add(gid, Member(module, "out"))
        return chan

    def where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module '{node.target}' ({type(self.gm.get_submodule(node.target)).__name__})"
        return f"'{_op_name(node)}' at node '{node.name}'"

    def tensor_args(self, node: fx.Node) -> tuple[list[Layout], list[fx.Node]]:
        """Channel-tracked inputs and untracked tensor inputs (parameters, unknown outputs) of ``node``."""
        chans: list[Layout] = []
        opaque: list[fx.Node] = []

        def collect(arg: Any) -> None:
            if isinstance(arg, fx.Node):
                info = self.env.get(arg)
                if isinstance(info, Layout):
                    chans.append(info)
                elif _shape(arg) is not None:
                    opaque.append(arg)
            return arg

        fx.node.map_aggregate((node.args, node.kwargs), collect)
        return chans, opaque

    def fallback(self, node: fx.Node, mixing: bool = False) -> Layout | None:
        """Pass one input's channels through an op that keeps them; otherwise block what it touches."""
        chans, opaque = self.tensor_args(node)
        out = _shape(node)
        if not chans:
            return None
        if node.meta.get("tensor_meta") is None:
            return None  # a size, dtype... derived from the tensor carries no channels
        if len(chans) == 1 and not opaque and not mixing and out is not None:
            chan, src = chans[0], _shape(node.args[0]) if node.args else None
            if src is not None and len(out) == len(src) and out[chan.dim] == src[chan.dim]:
                return chan
        self.block(chans, f"{self.where(node)} is not understood (it may mix or resize channels)")
        return None

    # ---- dispatch ------------------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return self.placeholder(node)
        if node.op == "get_attr":
            return None
        if node.op == "output":
            chans, _ = self.tensor_args(node)
            self.block(chans, "it feeds the model output")
            return None
        if node.op == "call_module":
            return self.call_module(node)
        return self.call_op(node)

    def placeholder(self, node: fx.Node) -> Layout | None:
        shape = _shape(node)
        if self.seen_input or shape is None or len(shape) < 2:
            return None
        self.seen_input = True
        gid = self.g.new(shape[1], "these are the model input channels")
        return Layout(1, [(gid, shape[1], 1)])

    def call_module(self, node: fx.Node) -> Any:
        name = str(node.target)
        module = self.gm.get_submodule(name)
        src = next((a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)), None)
        inp = self.env.get(src) if src is not None else None
        inp = inp if isinstance(inp, Layout) else None
        in_shape, out = _shape(src), _shape(node)
        if isinstance(module, CONVS):
            return self.conv(node, module, inp)
        if isinstance(module, nn.Linear):
            if inp is not None and (inp.dim != len(in_shape) - 1 or inp.total != module.in_features):
                self.block(inp, f"{self.where(node)} is applied along a non-channel dim")
            elif inp is not None:
                self.add_members(inp, name, "in")
            return self.new_chan(len(out) - 1, module.out_features, name)
        if isinstance(module, (*BATCH_NORMS, *INSTANCE_NORMS, nn.LayerNorm, nn.GroupNorm)):
            return self.norm(node, module, inp, in_shape)
        if isinstance(module, nn.Flatten):
            return self.reshape(node, inp, in_shape, out)
        if isinstance(module, nn.PReLU) and module.num_parameters == 1:
            return inp
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            self.block(self.tensor_args(node)[0], f"{self.where(node)} is a layer netfit does not know how to resize")
            return None
        return self.fallback(node, mixing=isinstance(module, _MIXING_MODULES))

    def conv(self, node: fx.Node, conv: nn.Module, inp: Layout | None) -> Layout:
        name, out_dim = str(node.target), 1
        fits = inp is not None and inp.dim == 1 and inp.total == conv.in_channels
        if inp is not None and not fits:
            self.block(inp, f"{self.where(node)} is applied along a non-channel dim")
        if conv.groups == 1:
            if fits:
                self.add_members(inp, name, "in")
            return self.new_chan(out_dim, conv.out_channels, name)
        if conv.groups == conv.in_channels == conv.out_channels:
            if not fits:
                return None
            self.add_members(inp, name, "dw")
            return Layout(inp.dim, inp.segs)  # a new object: a later norm pairs with the dw, not the producer
        reason = f"{self.where(node)} has groups={conv.groups} (only 1 or depthwise can be resized)"
        self.block(inp, reason)
        return self.new_chan(out_dim, conv.out_channels, name, reason)

    def norm(self, node: fx.Node, module: nn.Module, inp: Layout | None, in_shape: tuple) -> Layout | None:
        if inp is None:
            return None
        if isinstance(module, nn.LayerNorm):
            ok = len(module.normalized_shape) == 1 and inp.dim == len(in_shape) - 1
        else:
            ok = inp.dim == 1
        ok = ok and all(rep == 1 for _, _, rep in inp.segs)
        if not ok:
            self.block(inp, f"{self.where(node)} normalises over more than the channel dim")
            return None
        self.add_members(inp, str(node.target), "norm")
        return Layout(inp.dim, inp.segs)  # a new object: only the first norm pairs with the producer

    def call_op(self, node: fx.Node) -> Any:
        name = _op_name(node)
        src = node.args[0] if node.args else None
        inp = self.env.get(src) if isinstance(src, fx.Node) else None
        if name == "getitem":
            return self.getitem(node, inp)
        if name in ("cat", "concat", "concatenate"):
            return self.cat(node)
        if name in _BINARY_OPS:
            return self.binary(node)
        if not isinstance(inp, Layout):
            return self.fallback(node)
        in_shape, out = _shape(src), _shape(node)
        if name in _RESHAPE_OPS and out is not None:
            return self.reshape(node, inp, in_shape, out)
        if name in ("permute", "transpose", "t", "swapaxes", "movedim") and out is not None:
            return self.permute(node, name, inp, len(in_shape))
        if name in _REDUCE_OPS and out is not None:
            return self.reduce(node, inp, in_shape, out)
        if name in _SPLIT_DIM_ARG:
            return self.split(node, name, inp, len(in_shape))
        return self.fallback(node, mixing=name in _MIXING_OPS)

    # ---- op rules ------------------------------------------------------------------------------------
    def unify(self, a: Layout, b: Layout, node: fx.Node) -> None:
        self.equate(a.segs, b.segs, f"{self.where(node)} joins tensors whose channels are laid out differently")

    def equate(self, a: list[Seg], b: list[Seg], reason: str) -> None:
        """Make two layouts of the same channels one: groups are split to the common refinement of both
        layouts' boundaries (a concatenation meeting one conv's output splits that conv's group), then the
        pieces facing each other are joined. Blocks (with ``reason``) what cannot be matched: a cut inside the
        features of one channel, pieces of different repeats, channels facing an untracked tensor."""
        while True:
            a, b = self.g.resolve(a), self.g.resolve(b)
            if seg_span(a) != seg_span(b):
                self.block(Layout(0, a + b), reason)
                return
            cuts = seg_edges(a) | seg_edges(b)
            done = [self.cut_once(segs, cuts) for segs in (a, b)]
            if None in done:
                self.block(Layout(0, a + b), reason)
                return
            if not any(done):
                break
        for (x, xc, xr), (y, yc, yr) in zip(seg_atoms(a, cuts), seg_atoms(b, cuts), strict=True):
            if x is not None and y is not None and (xc, xr) == (yc, yr):
                self.g.union(x, y)
            elif x is not None or y is not None:
                self.block(Layout(0, [(x, xc, xr), (y, yc, yr)]), reason)

    def cut_once(self, segs: list[Seg], cuts: set[int]) -> bool | None:
        """Split the first group of ``segs`` that a position in ``cuts`` (in features) falls inside: True if
        one was split, False if none needs it, None if a cut falls inside the features of one channel."""
        start = 0
        for gid, count, rep in segs:
            end = start + count * rep
            inner = sorted(p for p in cuts if start < p < end)
            if gid is not None and inner:
                if any((p - start) % rep for p in inner):
                    return None
                edges = [0, *((p - start) // rep for p in inner), count]
                self.g.split(gid, [hi - lo for lo, hi in itertools.pairwise(edges)])
                return True
            start = end
        return False

    def binary(self, node: fx.Node) -> Layout | None:
        out = _shape(node)
        if out is None:
            return self.fallback(node)
        tracked: list[tuple[int, int, Layout]] = []  # (channel dim in the output, channel count, chan)
        opaque: list[tuple[fx.Node, tuple[int, ...]]] = []
        for arg in node.args[:2]:
            shape = _shape(arg)
            if shape is None:
                continue  # a Python scalar or a size
            info, lead = self.env.get(arg), len(out) - len(shape)
            if isinstance(info, Layout):
                tracked.append((info.dim + lead, shape[info.dim], info))
            else:
                opaque.append((arg, (1,) * lead + shape))
        if not tracked:
            return None
        tracked.sort(key=lambda t: -t[1])
        dim, size, main = tracked[0]
        for odim, osize, other in tracked[1:]:
            if osize == 1 and size > 1:
                continue  # broadcast of a one-channel map (spatial attention)
            if odim != dim or osize != size:
                self.block([main, other], f"{self.where(node)} combines tensors along different channel dims")
            else:
                self.unify(main, other, node)
        for arg, shape in opaque:
            if shape[dim] != 1:
                reason = f"{self.where(node)} combines the channels with '{arg.name}' (an unknown layer or parameter)"
                self.block(main, reason)
        return Layout(dim, main.segs)

    def cat(self, node: fx.Node) -> Layout | None:
        parts, out = list(_arg(node, 0, "tensors", [])), _shape(node)
        dim = _norm_dim(_arg(node, 1, "dim", 0), len(out)) if out is not None else -1
        infos = [self.env.get(p) if isinstance(p, fx.Node) else None for p in parts]
        chans = [c for c in infos if isinstance(c, Layout)]
        if not chans:
            return None
        if any(c.dim != chans[0].dim for c in chans):
            self.block(chans, f"{self.where(node)} concatenates tensors with different channel dims")
            return None
        if dim != chans[0].dim:
            for other in chans[1:]:
                self.unify(chans[0], other, node)
            if len(chans) != len(parts):
                self.block(chans, f"{self.where(node)} concatenates channels with an untracked tensor")
            return Layout(chans[0].dim, chans[0].segs)
        segs: list[Seg] = []
        for part, info in zip(parts, infos, strict=True):
            segs += info.segs if isinstance(info, Layout) else [(None, _shape(part)[dim], 1)]
        return Layout(dim, segs)

    def reshape(self, node: fx.Node, inp: Layout | None, in_shape: tuple, out: tuple) -> Layout | None:
        """Follow the channels through a view: kept as a dim, flattened (repeat grows) or unflattened."""
        if inp is None:
            return None
        d = inp.dim
        before, count, after = math.prod(in_shape[:d]), in_shape[d], math.prod(in_shape[d + 1 :])
        k = next((i for i in range(len(out)) if math.prod(out[:i]) == before and out[i] != 1), None)
        chan = None
        if k is not None and out[k] == count:
            chan = Layout(k, inp.segs)
        elif k is not None and out[k] == count * after and math.prod(out[k + 1 :]) == 1:
            chan = Layout(k, [(g, c, rep * after) for g, c, rep in inp.segs])
        elif k is not None and count % out[k] == 0 and all(rep % (count // out[k]) == 0 for _, _, rep in inp.segs):
            chan = Layout(k, [(g, c, rep // (count // out[k])) for g, c, rep in inp.segs])
        if chan is None:
            self.block(inp, f"{self.where(node)} reshapes in a way that mixes channels")
            return None
        if node.op != "call_module" and _op_name(node) in ("view", "reshape"):
            rest = node.args[1:]
            sizes = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else list(rest)
            sizes = sizes or list(node.kwargs.get("shape", node.kwargs.get("size", ())))
            if len(sizes) == len(out) and isinstance(sizes[k], int) and sizes[k] != -1:
                self.block(inp, f"{self.where(node)} hard-codes the channel count {sizes[k]} (use -1 or x.size())")
        return chan

    def permute(self, node: fx.Node, name: str, inp: Layout, ndim: int) -> Layout:
        args = list(node.args[1:])
        if name == "permute":
            order = list(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
            order = order or list(node.kwargs.get("dims", ()))
            return Layout([_norm_dim(i, ndim) for i in order].index(inp.dim), inp.segs)
        if name == "movedim":
            src, dst = _norm_dim(args[0], ndim), _norm_dim(args[1], ndim)
            order = [i for i in range(ndim) if i != src]
            order.insert(dst, src)
            return Layout(order.index(inp.dim), inp.segs)
        a, b = (0, 1) if name == "t" else (_norm_dim(args[0], ndim), _norm_dim(args[1], ndim))
        return Layout({a: b, b: a}.get(inp.dim, inp.dim), inp.segs)

    def reduce(self, node: fx.Node, inp: Layout, in_shape: tuple, out: tuple) -> Layout | None:
        dims, keep = _arg(node, 1, "dim"), bool(_arg(node, 2, "keepdim", False))
        if dims is None or not isinstance(dims, (int, tuple, list)):
            return None  # a full reduction: a scalar with no channels
        dims = {_norm_dim(i, len(in_shape)) for i in ([dims] if isinstance(dims, int) else dims)}
        if inp.dim in dims:
            return None  # channels summed away: nothing downstream depends on their count
        dim = inp.dim if keep else inp.dim - sum(i < inp.dim for i in dims)
        if dim < len(out) and out[dim] == in_shape[inp.dim]:
            return Layout(dim, inp.segs)
        return self.fallback(node)

    def split(self, node: fx.Node, name: str, inp: Layout, ndim: int) -> list[Layout | None] | None:
        dim = _norm_dim(_arg(node, _SPLIT_DIM_ARG[name], "dim", 0), ndim)
        parts = node.meta.get("tensor_meta")
        if not isinstance(parts, (tuple, list)):
            self.block(inp, f"{self.where(node)} is not understood (it may mix or resize channels)")
            return None
        if dim != inp.dim:
            new_dim = inp.dim - (name == "unbind" and dim < inp.dim)
            return [Layout(new_dim, inp.segs) for _ in parts]
        sizes = [p.shape[dim] if hasattr(p, "shape") else -1 for p in parts]
        count = _arg(node, 1, "chunks" if name == "chunk" else "sections")
        if name not in ("chunk", "tensor_split") or count != len(parts) or len(set(sizes)) != 1:
            reason = f"{self.where(node)} splits the channel dim at fixed positions (chunk(n) into equal parts can)"
            self.block(inp, reason)
            return None
        # equal parts of a width-independent count: channel j of every part is pruned together
        cuts = {sizes[0] * k for k in range(len(parts) + 1)}
        while (done := self.cut_once(self.g.resolve(inp.segs), cuts)) is True:
            pass
        if done is None:
            self.block(inp, f"{self.where(node)} splits the channel dim inside a channel's features")
            return None
        chans = [Layout(dim, seg_between(self.g.resolve(inp.segs), lo, lo + sizes[0])) for lo in sorted(cuts)[:-1]]
        for other in chans[1:]:
            self.equate(chans[0].segs, other.segs, f"{self.where(node)} splits channels laid out differently")
        return chans

    def getitem(self, node: fx.Node, inp: Any) -> Any:
        index = node.args[1]
        if isinstance(inp, list):
            return inp[index] if isinstance(index, int) else None
        if not isinstance(inp, Layout) or _shape(node) is None:
            return None
        items = list(index) if isinstance(index, tuple) else [index]
        ndim, d, i, j = len(_shape(node.args[0])), inp.dim, 0, 0
        for pos, item in enumerate(items):
            if item is Ellipsis:
                skip = ndim - i - sum(x is not None and x is not Ellipsis for x in items[pos + 1 :])
                if i <= d < i + skip:
                    return Layout(j + d - i, inp.segs)
                i, j = i + skip, j + skip
            elif item is None:
                j += 1
            elif isinstance(item, slice) and item == slice(None):
                if i == d:
                    return Layout(j, inp.segs)
                i, j = i + 1, j + 1
            elif i == d or not isinstance(item, (int, slice)):
                self.block(inp, f"{self.where(node)} indexes into the channel dim")
                return None
            else:
                i, j = i + 1, j + (0 if isinstance(item, int) else 1)
        return Layout(j + d - i, inp.segs)
