"""Models: ResNet-50/101/152, their ε-ResNet counterparts, pruning and counting."""

from suite.models.count import count_flops, count_params
from suite.models.epsilon import EpsilonBottleneck, EpsilonGated, ShortcutOnly, branch_excess, epsilon_gate
from suite.models.prune import (
    PruneResult,
    identity_scores,
    load_model,
    prune,
    purge_closest_to_identity,
    rebuild_without,
    save_model,
)
from suite.models.registry import (
    ARCHITECTURES,
    EPS_PREFIX,
    STAGE_DEPTHS,
    arch_spec,
    block_numbers,
    block_pairs,
    build_model,
    check_image_size,
)
from suite.models.resnet import ArchSpec, ResNet, split_outputs

__all__ = [
    "ARCHITECTURES",
    "EPS_PREFIX",
    "STAGE_DEPTHS",
    "ArchSpec",
    "EpsilonBottleneck",
    "EpsilonGated",
    "PruneResult",
    "ResNet",
    "ShortcutOnly",
    "arch_spec",
    "block_numbers",
    "block_pairs",
    "branch_excess",
    "build_model",
    "check_image_size",
    "count_flops",
    "count_params",
    "epsilon_gate",
    "identity_scores",
    "load_model",
    "prune",
    "purge_closest_to_identity",
    "rebuild_without",
    "save_model",
    "split_outputs",
]
