"""BlockNet: the plain network a block-wise search assembles (``--method blockwise``), as an arch spec.

Spec: {"family": "blocknet", "num_classes", "in_chans", "ndim", "stem": {"width", "stride", "kernel"},
       "stages": [{"stride", "width", "blocks": [{"hidden", "kernel"}...]}], "head": {"neck", "dropout"}}
The stem is conv-BN-ReLU6; every stage is one searched block: a sequence of MBConv layers (the MobileNetV2
inverted residual, 1-D or 2-D), the first one striding to the stage width, the others shape-preserving with a
residual. "hidden" is a layer's expanded width (expansion x its input width when built by the search).
"""

from __future__ import annotations

from torch import nn

from .mobilenetv2 import InvertedResidual
from .registry import FAMILIES, require_positive
from .staged import Head, StagedNet, build_stages, conv_bn, ndim_of


class BlockNet(StagedNet):
    family = "blocknet"


@FAMILIES.register("blocknet")
class BlockNetFamily:
    name = "blocknet"

    @staticmethod
    def build(arch: dict) -> BlockNet:
        require_positive(arch, "num_classes", "in_chans", "stem.width", "stem.stride", "stem.kernel")
        ndim, stem = arch.get("ndim", 2), arch["stem"]
        if ndim not in (1, 2):
            raise ValueError(f"ndim must be 1 or 2, got {ndim}")
        stem_layers = conv_bn(ndim, arch["in_chans"], stem["width"], stem["kernel"], stem["stride"])
        stages, cin = build_stages(
            arch,
            stem["width"],
            lambda cin, stage, layer, stride, j: InvertedResidual(
                cin,
                layer["hidden"],
                stage["width"],
                stride,
                layer["kernel"],
                expand=True,
                residual=stage.get("first_residual") if j == 0 else None,
                ndim=ndim,
            ),
        )
        head = Head(ndim, cin, arch["num_classes"], **arch.get("head", {}))
        return BlockNet(nn.Sequential(*stem_layers, nn.ReLU6(inplace=True)), stages, head, ndim)

    @staticmethod
    def describe(model: BlockNet) -> dict:
        stages = []
        for stage in model.stages:
            b0 = stage[0]
            spec = {
                "stride": b0.depthwise[0].stride[0],
                "width": b0.project[0].out_channels,
                "blocks": [
                    {"hidden": b.depthwise[0].out_channels, "kernel": b.depthwise[0].kernel_size[0]} for b in stage
                ],
            }
            natural = spec["stride"] == 1 and b0.expand[0].in_channels == spec["width"]
            if b0.use_residual != natural:
                spec["first_residual"] = b0.use_residual  # slicing made the widths (un)equal: keep the topology
            stages.append(spec)
        conv = model.stem[0]
        return {
            "family": "blocknet",
            "num_classes": model.head.fc.out_features,
            "in_chans": conv.in_channels,
            "ndim": ndim_of(conv),
            "stem": {"width": conv.out_channels, "stride": conv.stride[0], "kernel": conv.kernel_size[0]},
            "stages": stages,
            "head": model.head.describe(),
        }
