"""The synthetic backend: random tensors, for pure throughput with no per-step data cost."""

from __future__ import annotations

import math

import torch

from suite.data.config import DataConfig, DatasetInfo
from suite.data.decode import IMAGENET_MIN_CROP_SCALE
from suite.data.loaders import Loaders

MIN_CROP_SCALE = IMAGENET_MIN_CROP_SCALE  # nothing is cropped: DataConfig's default, so configs compare equal
DEFAULT_NUM_CLASSES = 10


def preflight(cfg: DataConfig) -> DatasetInfo:
    return DatasetInfo(
        backend="synthetic",
        root=None,
        num_classes=cfg.num_classes or DEFAULT_NUM_CLASSES,
        train_size=cfg.synthetic_train_size,
        val_size=cfg.synthetic_val_size,
        corrupt_files=(),
    )


def loaders(cfg: DataConfig, info: DatasetInfo, *, micro_batch: int, rank: int, world_size: int) -> Loaders:
    generator = torch.Generator().manual_seed(cfg.seed)
    images = torch.randn(micro_batch, 3, cfg.image_size, cfg.image_size, generator=generator)
    labels = torch.randint(0, info.num_classes, (micro_batch,), generator=generator)
    if torch.cuda.is_available():  # pinned once, so the trainer's non_blocking copies are asynchronous
        images, labels = images.pin_memory(), labels.pin_memory()
    steps = info.train_size // (micro_batch * world_size)
    val_indices = range(rank, info.val_size, world_size)
    val = _SyntheticVal(val_indices, micro_batch, cfg.image_size, info.num_classes, cfg.seed)
    return Loaders(_RepeatedBatch(images, labels, steps), val)


class _RepeatedBatch:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int):
        self.images, self.labels, self.steps = images, labels, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.images, self.labels


class _SyntheticVal:
    """A fixed labelled set, each image generated from (seed, index) on demand: no memory held between
    evaluations, and the same image whichever rank draws it."""

    def __init__(self, indices: range, micro_batch: int, image_size: int, num_classes: int, seed: int):
        self.indices, self.micro_batch = indices, micro_batch
        self.image_size, self.num_classes, self.seed = image_size, num_classes, seed

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.micro_batch)

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        label = int(torch.randint(0, self.num_classes, (), generator=generator))
        return torch.randn(3, self.image_size, self.image_size, generator=generator), label

    def __iter__(self):
        for start in range(0, len(self.indices), self.micro_batch):
            items = [self._item(i) for i in self.indices[start : start + self.micro_batch]]
            yield torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)
