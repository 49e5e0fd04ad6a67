"""The "graph" family: a JSON arch spec for any fx-traceable model built from standard layers.

A user's model is rebuilt as a ``torch.fx.GraphModule`` without the user's Python class, without pickle and
without eval: module types, functions and methods are looked up in explicit whitelists by name. Parameter names
match the original model's, so its safetensors load into the rebuilt one.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, UnsupportedLayerError
from .registry import FAMILIES

_CONV = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "bias",
    "padding_mode",
)
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_POOL = ("kernel_size", "stride", "padding", "ceil_mode")
MODULES: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Conv1d": (nn.Conv1d, _CONV),
    "Conv2d": (nn.Conv2d, _CONV),
    "Conv3d": (nn.Conv3d, _CONV),
    "ConvTranspose2d": (nn.ConvTranspose2d, (*_CONV, "output_padding")),
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "BatchNorm1d": (nn.BatchNorm1d, _BN),
    "BatchNorm2d": (nn.BatchNorm2d, _BN),
    "LayerNorm": (nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine", "bias")),
    "GroupNorm": (nn.GroupNorm, ("num_groups", "num_channels", "eps", "affine")),
    "ReLU": (nn.ReLU, ("inplace",)),
    "ReLU6": (nn.ReLU6, ("inplace",)),
    "SiLU": (nn.SiLU, ("inplace",)),
    "GELU": (nn.GELU, ("approximate",)),
    "Sigmoid": (nn.Sigmoid, ()),
    "Tanh": (nn.Tanh, ()),
    "Hardswish": (nn.Hardswish, ("inplace",)),
    "Hardsigmoid": (nn.Hardsigmoid, ("inplace",)),
    "LeakyReLU": (nn.LeakyReLU, ("negative_slope", "inplace")),
    "Dropout": (nn.Dropout, ("p", "inplace")),
    "Identity": (nn.Identity, ()),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "Softmax": (nn.Softmax, ("dim",)),
    "MaxPool1d": (nn.MaxPool1d, (*_POOL, "dilation")),
    "MaxPool2d": (nn.MaxPool2d, (*_POOL, "dilation")),
    "AvgPool1d": (nn.AvgPool1d, (*_POOL, "count_include_pad")),
    "AvgPool2d": (nn.AvgPool2d, (*_POOL, "count_include_pad")),
    "AdaptiveAvgPool1d": (nn.AdaptiveAvgPool1d, ("output_size",)),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
}
FUNCTIONS: dict[str, Any] = {
    "operator.add": operator.add,
    "operator.sub": operator.sub,
    "operator.mul": operator.mul,
    "operator.truediv": operator.truediv,
    "operator.getitem": operator.getitem,
    "operator.iadd": operator.iadd,
    "torch.add": torch.add,
    "torch.mul": torch.mul,
    "torch.cat": torch.cat,
    "torch.flatten": torch.flatten,
    "torch.relu": torch.relu,
    "torch.sigmoid": torch.sigmoid,
    "torch.tanh": torch.tanh,
    "torch.mean": torch.mean,
    "torch.sum": torch.sum,
    "F.relu": F.relu,
    "F.relu6": F.relu6,
    "F.gelu": F.gelu,
    "F.silu": F.silu,
    "F.adaptive_avg_pool1d": F.adaptive_avg_pool1d,
    "F.adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "F.avg_pool2d": F.avg_pool2d,
    "F.max_pool2d": F.max_pool2d,
    "F.dropout": F.dropout,
    "F.softmax": F.softmax,
}
_FUNCTION_NAMES = {id(fn): name for name, fn in FUNCTIONS.items()}
METHODS = {
    "view",
    "reshape",
    "flatten",
    "mean",
    "sum",
    "size",
    "relu",
    "sigmoid",
    "permute",
    "transpose",
    "contiguous",
    "chunk",
    "split",
    "squeeze",
    "unsqueeze",
    "add",
    "mul",
    "softmax",
    "flip",
}
_UNSUPPORTED = "; only models of standard layers can be saved as a plain netfit model"


def _encode(value: Any) -> Any:
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start), _encode(value.stop), _encode(value.step)]}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if value is Ellipsis:
        return {"ellipsis": True}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise UnsupportedLayerError(f"cannot describe argument {value!r} of type {type(value).__name__}{_UNSUPPORTED}")


def _decode(value: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(value, list):
        return [_decode(v, env) for v in value]
    if not isinstance(value, dict):
        return value
    if "node" in value:
        if value["node"] not in env:
            raise CheckpointError(f"arch spec: node {value['node']!r} is used before it is defined")
        return env[value["node"]]
    if "tuple" in value:
        return tuple(_decode(v, env) for v in value["tuple"])
    if "dict" in value:
        return {k: _decode(v, env) for k, v in value["dict"].items()}
    if "slice" in value:
        return slice(*(_decode(v, env) for v in value["slice"]))
    if "dtype" in value:
        dtype = getattr(torch, value["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"unknown dtype {value['dtype']!r} in arch spec")
        return dtype
    if value.get("ellipsis"):
        return Ellipsis
    raise CheckpointError(f"unreadable argument {value!r} in arch spec")


def _module_spec(name: str, module: nn.Module) -> dict:
    kind = type(module).__name__
    if kind not in MODULES or type(module) is not MODULES[kind][0]:
        raise UnsupportedLayerError(f"layer {name} ({type(module).__name__}) is not a standard layer{_UNSUPPORTED}")
    args = {}
    for attr in MODULES[kind][1]:
        value = getattr(module, attr)
        args[attr] = (value is not None) if attr == "bias" else list(value) if isinstance(value, tuple) else value
    return {"type": kind, "args": args}


@FAMILIES.register("graph")
class GraphFamily:
    name = "graph"

    @staticmethod
    def describe(model: nn.Module) -> dict:
        """Trace ``model`` with torch.fx and describe its layers and graph as JSON-serialisable data.

        Raises:
            UnsupportedLayerError: the model cannot be traced or uses a layer, function or method outside the
                whitelists.
        """
        try:
            traced = fx.symbolic_trace(model)
        except Exception as e:  # fx raises many exception types for untraceable code
            raise UnsupportedLayerError(
                f"cannot trace {type(model).__name__}: {str(e).splitlines()[0]}{_UNSUPPORTED}"
            ) from e
        modules, params, buffers, nodes = {}, {}, {}, []
        for node in traced.graph.nodes:
            entry = {
                "op": node.op,
                "name": node.name,
                "target": node.target,
                "args": _encode(node.args),
                "kwargs": _encode(dict(node.kwargs)),
            }
            if node.op == "call_module":
                modules[node.target] = _module_spec(node.target, traced.get_submodule(node.target))
            elif node.op == "call_function":
                if id(node.target) not in _FUNCTION_NAMES:
                    raise UnsupportedLayerError(
                        f"operation {getattr(node.target, '__name__', node.target)} is not supported{_UNSUPPORTED}"
                    )
                entry["target"] = _FUNCTION_NAMES[id(node.target)]
            elif node.op == "call_method" and node.target not in METHODS:
                raise UnsupportedLayerError(f"tensor method .{node.target}() is not supported{_UNSUPPORTED}")
            elif node.op == "get_attr":
                _describe_attr(traced, node.target, params, buffers)
            nodes.append(entry)
        return {"family": "graph", "modules": modules, "params": params, "buffers": buffers, "nodes": nodes}

    @staticmethod
    def build(arch: dict) -> fx.GraphModule:
        """Rebuild the model described by :meth:`describe` (weights uninitialised: load them afterwards).

        Raises:
            CheckpointError: the spec names a layer, function, method or node kind outside the whitelists.
        """
        root = nn.Module()
        for name, spec in arch["modules"].items():
            if spec["type"] not in MODULES:
                raise CheckpointError(f"arch spec: layer type {spec['type']!r} of {name} is not a standard layer")
            _set_submodule(root, name, MODULES[spec["type"]][0](**spec["args"]))
        for name, shape in arch.get("params", {}).items():
            owner, leaf = _owner(root, name)
            owner.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))
        for name, shape in arch.get("buffers", {}).items():
            owner, leaf = _owner(root, name)
            owner.register_buffer(leaf, torch.zeros(shape))
        graph, env = fx.Graph(), {}
        for node in arch["nodes"]:
            result = _add_node(graph, node, env)
            if result is not None:
                env[node["name"]] = result
        return fx.GraphModule(root, graph, class_name="NetfitGraph")


def _add_node(graph: fx.Graph, node: dict, env: dict[str, fx.Node]) -> fx.Node | None:
    """Append one described node to ``graph``; only whitelisted functions and methods are resolved."""
    op, target = node["op"], node["target"]
    args, kwargs = _decode(node["args"], env), _decode(node["kwargs"], env)
    if op == "placeholder":
        return graph.placeholder(target)
    if op == "call_module":
        return graph.call_module(target, args, kwargs)
    if op == "call_function":
        if target not in FUNCTIONS:
            raise CheckpointError(f"arch spec: function {target!r} is not allowed")
        return graph.call_function(FUNCTIONS[target], args, kwargs)
    if op == "call_method":
        if target not in METHODS:
            raise CheckpointError(f"arch spec: tensor method {target!r} is not allowed")
        return graph.call_method(target, args, kwargs)
    if op == "get_attr":
        return graph.get_attr(target)
    if op == "output":
        graph.output(args[0])
        return None
    raise CheckpointError(f"arch spec: unknown node op {op!r}")


def _describe_attr(traced: fx.GraphModule, target: str, params: dict, buffers: dict) -> None:
    """Record the shape of a parameter or buffer the graph reads directly (``self.scale * x``)."""
    if target in dict(traced.named_parameters()):
        params[target] = list(traced.get_parameter(target).shape)
    elif target in dict(traced.named_buffers()):
        buffers[target] = list(traced.get_buffer(target).shape)
    else:
        raise UnsupportedLayerError(f"attribute {target} is neither a parameter nor a buffer{_UNSUPPORTED}")


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module that holds the dotted attribute ``name`` (created empty if absent) and the attribute's name."""
    *path, leaf = name.split(".")
    parent = root
    for part in path:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    return parent, leaf


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, leaf = _owner(root, name)
    parent.add_module(leaf, module)
