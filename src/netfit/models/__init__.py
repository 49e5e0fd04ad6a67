"""The model zoo: built-in networks as arch specs, the registries, and the timm bridge."""

from . import blocknet as _blocknet  # noqa: F401  (registers the "blocknet" family of block-wise searches)
from . import cnn as _cnn  # noqa: F401  (registers cnn_small, cnn1d)
from . import darts as _darts  # noqa: F401  (registers the "darts" cell-network family)
from . import graph as _graph  # noqa: F401  (registers the "graph" family for user models)
from . import mobilenetv2 as _mobilenetv2  # noqa: F401  (registers mobilenetv2*)
from . import resnet as _resnet  # noqa: F401  (registers resnet*)
from . import spidernet as _spidernet  # noqa: F401  (registers the "spidernet" family)
from . import staged_graph as _staged_graph  # noqa: F401  (registers "staged_graph": user models cut into stages)
from .registry import FAMILIES, MODELS, arch_of, build_model, create_model, default_arch, list_models, scale_width
from .staged import StagedNet

__all__ = [
    "FAMILIES",
    "MODELS",
    "StagedNet",
    "arch_of",
    "build_model",
    "create_model",
    "default_arch",
    "list_models",
    "scale_width",
]
