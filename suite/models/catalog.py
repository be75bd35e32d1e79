"""What `resnet-bench models` lists: every registered architecture at its default size, once per block."""

from __future__ import annotations

from suite.models.count import count_flops, count_params
from suite.models.registry import ARCHITECTURES, BLOCKS, build_model


def describe_all() -> list[dict]:
    rows = []
    for block in BLOCKS:
        for name, entry in ARCHITECTURES.items():
            model = build_model(
                arch=name,
                epsilon=0.0 if entry.gated else None,
                num_classes=entry.default_num_classes,
                block=block,
            )
            rows.append(
                {
                    "name": name,
                    "block": block,
                    "depth": entry.depth,
                    "gated": entry.gated,
                    "blocks": sum(model.arch.layers),
                    "params": count_params(model),
                    "image_size": entry.default_image_size,
                    "flops": count_flops(model, entry.default_image_size),
                }
            )
    return rows
