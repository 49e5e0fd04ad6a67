"""The generic channel space: traced channel groups, slicing, importance and weight inheritance."""

from .channels import ChannelGroup, ChannelGroupError, Member, trace_channel_groups
from .importance import channel_activity, keep_top, l1_importance
from .inherit import inherit_weights
from .prune import slice_channels

__all__ = [
    "ChannelGroup",
    "ChannelGroupError",
    "Member",
    "channel_activity",
    "inherit_weights",
    "keep_top",
    "l1_importance",
    "slice_channels",
    "trace_channel_groups",
]
