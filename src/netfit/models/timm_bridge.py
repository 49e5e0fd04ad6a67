"""``timm:NAME`` models, built by timm when it is installed (extra ``timm``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import UnknownNameError, require


def create_timm_model(name: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    timm = require("timm", "timm")
    if not timm.list_models(name):
        raise UnknownNameError(f"unknown timm model {name!r}; see timm.list_models()")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.netfit_name = f"timm:{name}"
    return model
