"""`pruning_speedup`: does removing ε-ResNet's gated-off blocks buy the speed its FLOPs promise?

(inference images/s of the pruned model ÷ the unpruned model) ÷ (FLOPs unpruned ÷ FLOPs pruned): 1.0 means
every FLOP removed is time saved. The pruned model comes out of the suite's own path (`suite.models.prune`
on an ε-ResNet whose chosen blocks are exact identities), not a hand-built smaller network. The unpruned
side is the same weights as a plain ResNet (`rebuild_without(model, [])`): the ε model itself would also
pay for its gates, which would flatter the pruned side.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch

from benchmarks.session import Session
from benchmarks.stats import Goal, result, spread
from suite.models import build_model, count_flops, prune, rebuild_without

GOAL = Goal(">=", 0.90)
# Which blocks the "training" gated off: every other non-first block of each stage (7 of ResNet-50's 16),
# spread over all four stages so the saving is not all at one resolution.
REMOVED = ((0, 1), (1, 1), (1, 3), (2, 1), (2, 3), (2, 5), (3, 1))


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pruned_pair(*, width: int, image_size: int, batch: int, seed: int = 0):
    """(unpruned plain model, pruned model, calibration batches) from an ε-ResNet-50 with `REMOVED` gated off.

    Zeroing a block's last BN (scale and shift) makes its branch output exactly 0, inside any ε, so its gate
    is 0 on every input: the state a trained ε-ResNet leaves a discarded block in.
    """
    torch.manual_seed(seed)
    model = build_model(arch="eps_resnet50", epsilon=1e-3, width=width, num_classes=10, small_stem=True)
    for s, j in REMOVED:
        bn3 = model.stages[s][j].bn3
        torch.nn.init.zeros_(bn3.weight)
        torch.nn.init.zeros_(bn3.bias)
    model.eval()
    data = [torch.randn(batch, 3, image_size, image_size) for _ in range(2)]
    pruned = prune(model, data)
    if sorted(pruned.removed) != sorted(REMOVED):
        raise RuntimeError(f"prune removed {pruned.removed}, expected {list(REMOVED)}")
    unpruned = rebuild_without(model, []).eval()
    with torch.no_grad():
        expected, got = model(data[0]), pruned.model.eval()(data[0])
    if not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        raise RuntimeError("the pruned model's logits differ from the ε model's")
    return unpruned, pruned.model.eval(), data


def speedup(
    fast: torch.nn.Module, slow: torch.nn.Module, images: torch.Tensor, pairs: int
) -> tuple[float, float, float]:
    """(time of `slow` ÷ time of `fast`, fast images/s, slow images/s) over `pairs` interleaved forward passes.

    The interleave is per pass (A B, B A, …) and the result the median of the pairs' ratios: on a shared
    machine a pass that loses its core is several times slower, and passes a few tens of milliseconds apart
    share the same neighbours, so each pair's ratio is far steadier than either side's time. Rates are
    from the median pass of each side.
    """

    def timed(model: torch.nn.Module) -> float:
        start = time.perf_counter()
        model(images)
        return time.perf_counter() - start

    with torch.inference_mode():
        fast(images), slow(images)  # untimed: first-call allocations and kernel selection
        got = []
        for i in range(pairs):
            if i % 2 == 0:
                f = timed(fast)
                s = timed(slow)
            else:
                s = timed(slow)
                f = timed(fast)
            got.append((f, s))
    ratio = statistics.median(s / f for f, s in got)
    n = len(images)
    return ratio, n / statistics.median(f for f, _ in got), n / statistics.median(s for _, s in got)


def pruning_speedup(session: Session) -> dict:
    preset = session.preset
    size = preset.pruning_image_size
    unpruned, pruned, data = pruned_pair(
        width=preset.pruning_width, image_size=size, batch=preset.pruning_batch
    )
    flops_unpruned, flops_pruned = count_flops(unpruned, size), count_flops(pruned, size)
    flop_ratio = flops_unpruned / flops_pruned
    images = data[0]
    with torch_threads(1):  # one thread, as every training rank here
        runs = [speedup(pruned, unpruned, images, preset.pruning_batches) for _ in range(preset.repetitions)]
    speedups = [r[0] for r in runs]
    s = spread(speedups)
    return result(
        [x / flop_ratio for x in speedups],
        GOAL,
        details={
            "speedup": {"median": s.median, "min": s.lo, "max": s.hi},
            "flops_unpruned": flops_unpruned,
            "flops_pruned": flops_pruned,
            "flop_ratio": flop_ratio,
            "blocks_removed": len(REMOVED),
            "pruned_images_per_s": spread([r[1] for r in runs]).median,
            "unpruned_images_per_s": spread([r[2] for r in runs]).median,
            "config": {
                "arch": "eps_resnet50",
                "width": preset.pruning_width,
                "image_size": size,
                "small_stem": True,
                "batch": preset.pruning_batch,
                "threads": 1,
            },
        },
    )
