"""The synthetic backend: random tensors, for pure throughput with no per-step data cost."""

from __future__ import annotations

import math

import torch

from suite.data.config import DataConfig, DatasetInfo
from suite.data.decode import IMAGENET_MIN_CROP_SCALE
from suite.data.loaders import Loaders, sharded

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
    select_size = max(1, round(cfg.select_fraction * info.train_size))
    # Two separate streams: the select one drawn with the run's seed, the test one the same for every run.
    select = _SyntheticHeldOut(
        sharded(select_size, rank, world_size), micro_batch, cfg.image_size, info.num_classes, cfg.seed + 1
    )
    test = _SyntheticHeldOut(
        sharded(info.val_size, rank, world_size), micro_batch, cfg.image_size, info.num_classes, 0
    )
    return Loaders(_RepeatedBatch(images, labels, steps), select, test)


class _RepeatedBatch:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int):
        self.images, self.labels, self.steps = images, labels, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.images, self.labels


class _SyntheticHeldOut:
    """A fixed labelled set, each image generated from (stream, index) on demand: no memory held between
    evaluations, and the same image whichever rank draws it. Stream 0 is the test split; stream seed + 1 the
    select split of seed `seed`, so the two never share an image."""

    def __init__(self, indices: list[int], micro_batch: int, image_size: int, num_classes: int, stream: int):
        self.indices, self.micro_batch = indices, micro_batch
        self.image_size, self.num_classes, self.stream = image_size, num_classes, stream

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.micro_batch)

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.stream * 1_000_003 + index + 1)
        label = int(torch.randint(0, self.num_classes, (), generator=generator))
        return torch.randn(3, self.image_size, self.image_size, generator=generator), label

    def __iter__(self):
        for start in range(0, len(self.indices), self.micro_batch):
            items = [self._item(i) for i in self.indices[start : start + self.micro_batch]]
            yield torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)
