"""Parameter and FLOP counts, measured on the module itself rather than written down by hand."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, image_size: int) -> int:
    """Forward FLOPs for one image in eval mode (torch's counter: 2 FLOPs per multiply-accumulate).

    Only matmuls and convolutions are counted (BN, ReLU, adds and pooling are not), which is the convention of
    torchvision's published GFLOPS. The side head is training-only and so not counted.
    """
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            p = next(model.parameters())
            model(torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype))
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)
