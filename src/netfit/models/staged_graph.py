"""The "staged_graph" family: a user's model cut into stem -> stages of residual blocks -> head, each piece a
``torch.fx.GraphModule`` described by the "graph" family's JSON spec (no pickle, no user class).

Spec: {"family": "staged_graph", "stem": <graph spec>, "stages": [{"blocks": [<graph spec>, ...]}, ...],
       "head": <graph spec>}
A stage's blocks after the first keep their input's shape, so the StagedNet machinery (depth truncation,
identity-initialised extra blocks, depth gates) works on it unchanged; ``netfit.space.blocks`` makes the cut.
"""

from __future__ import annotations

from torch import fx, nn

from .graph import GraphFamily
from .registry import FAMILIES
from .staged import StagedNet


class GraphStagedNet(StagedNet):
    """A StagedNet whose stem, blocks and head are traced pieces of a user's model (weights kept as they are)."""

    family = "staged_graph"

    def __init__(self, stem: fx.GraphModule, stages: list[nn.Sequential], head: fx.GraphModule) -> None:
        nn.Module.__init__(self)  # not StagedNet's: there is no Head with an ``fc``, and weights must not be re-drawn
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head  # StagedNet's forward: stem, stages, head


@FAMILIES.register("staged_graph")
class StagedGraphFamily:
    name = "staged_graph"

    @staticmethod
    def describe(model: GraphStagedNet) -> dict:
        return {
            "family": "staged_graph",
            "stem": GraphFamily.describe(model.stem),
            "stages": [{"blocks": [GraphFamily.describe(block) for block in stage]} for stage in model.stages],
            "head": GraphFamily.describe(model.head),
        }

    @staticmethod
    def build(arch: dict) -> GraphStagedNet:
        if not arch["stages"] or any(not stage["blocks"] for stage in arch["stages"]):
            raise ValueError("every stage needs at least one block")
        stages = [nn.Sequential(*(GraphFamily.build(b) for b in stage["blocks"])) for stage in arch["stages"]]
        return GraphStagedNet(GraphFamily.build(arch["stem"]), stages, GraphFamily.build(arch["head"]))
