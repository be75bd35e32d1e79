"""`data_pipeline`: the suite's ImageNet-layout loader against torchvision's default pipeline, per worker, on
the same JPEGs; and how long a training run with the default loader settings waits for data. `view_cache`: the
loaders on a small-image set with and without the decoded-view cache (suite/data/imagefolder.py).

The files are ImageNet-like in what costs time: 500×375 and 375×500 JPEGs (ImageNet's most common sizes) at
quality 90, textured rather than flat so that entropy decoding has real work. Both sides train-augment to
the same size (RandomResizedCrop + flip, normalised float batches) with one DataLoader worker.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms

from benchmarks.session import REQUEST_TIMEOUT_S, Session
from benchmarks.stats import Goal, check, interleave, paired_ratios, result, spread
from suite.data.config import DataConfig
from suite.data.decode import IMAGENET_MEAN, IMAGENET_STD
from suite.data.loaders import build_loaders
from suite.data.preflight import prepare_data
from suite.spec import RunSpec

GOAL = Goal(">=", 1.0)
DATA_WAIT_GOAL = Goal("<=", 0.05)
# At 12 px a shapes image costs more to decode than to shift and flip: kept views should at least halve an
# epoch's loading.
VIEW_CACHE_GOAL = Goal(">=", 2.0)
# grids/study.yaml's input: the shapes set at 12 px, pad_crop, loaded in the training process, batch 64.
VIEW_CACHE_DATA = DataConfig(backend="shapes", image_size=12, augment="pad_crop", workers=0)
VIEW_CACHE_BATCH = 64
CLASSES = 8
SIZES = ((500, 375), (375, 500))


def imagenet_like(root: Path, *, per_class: int, val_per_class: int = 2, seed: int = 0) -> Path:
    """Write an ImageNet-layout folder (train/ and val/, one folder per class) of photo-sized JPEGs."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c in range(CLASSES):
            folder = root / split / f"n{c:08d}"  # ImageNet's synset-style folder names
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = SIZES[(c + i) % 2]
                # Smooth colour fields plus grain: large structures and fine detail, like a photograph.
                coarse = Image.fromarray(rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8))
                base = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
                pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:05d}.JPEG", quality=90)
    return root


def per_class_for(images: int) -> int:
    """Training images per class so the suite's train split, after the loaders hold out the select split
    (`DataConfig.select_fraction`, at least one per class), still holds `images`."""
    fraction = DataConfig().select_fraction
    return math.ceil(math.ceil(images / CLASSES) / (1 - fraction)) + 1


def loader_rate(loader, batches: int, workers: int) -> float:
    """Images/s per worker over `batches` batches, after the first (which pays the worker's start-up)."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        batch = next(it)
        images += len(batch[1])
    return images / (time.perf_counter() - start) / workers


def suite_rate(root: Path, *, size: int, batch: int, batches: int, epoch: int) -> float:
    cfg = DataConfig(backend="imagefolder", data_dir=str(root), image_size=size, workers=1)
    loaders = build_loaders(cfg, prepare_data(cfg), micro_batch=batch, rank=0, world_size=1)
    loaders.set_epoch(epoch)
    return loader_rate(loaders.train, batches, cfg.workers)


def torchvision_rate(root: Path, *, size: int, batch: int, batches: int) -> float:
    """torchvision's ImageFolder with the reference training transforms and DataLoader defaults."""
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=1)
    return loader_rate(loader, batches, 1)


def data_pipeline(session: Session) -> dict:
    preset = session.preset
    size, batch, batches = preset.pipeline_image_size, preset.pipeline_batch, preset.pipeline_batches
    root = imagenet_like(session.workdir / "imagenet-like", per_class=per_class_for((batches + 2) * batch))
    epochs = iter(range(10**6))
    ours, theirs = interleave(
        lambda: suite_rate(root, size=size, batch=batch, batches=batches, epoch=next(epochs)),
        lambda: torchvision_rate(root, size=size, batch=batch, batches=batches),
        preset.repetitions,
    )
    # The data-wait fraction of a real training run: the suite's default loader settings (RunSpec's
    # loader_workers and the DataLoader settings in suite/data/loaders.py) on the bundled shapes set.
    spec = preset.train_spec(
        dataset="shapes",
        steps_per_epoch=preset.warmup_steps + preset.data_wait_timed_steps,
    )
    del spec["loader_workers"]
    suite = session.worker("suite1")
    session.log("data_pipeline: training run with the default loader settings")
    runs = [suite.request("run", REQUEST_TIMEOUT_S, spec=spec) for _ in range(preset.data_wait_runs)]
    waits = [r["data_wait_frac"] for r in runs]
    return result(
        paired_ratios(ours, theirs),
        GOAL,
        extra=[check("data_wait_frac", waits, DATA_WAIT_GOAL)],
        details={
            "suite_images_per_s_per_worker": spread(ours).median,
            "torchvision_images_per_s_per_worker": spread(theirs).median,
            "image_size": size,
            "batch": batch,
            "files": f"{CLASSES} classes, 500×375 / 375×500 JPEG q90",
            "data_wait_frac": waits,
            "data_wait_run": {**spec, "loader_workers": RunSpec.loader_workers},
            "data_wait_images_per_s": [r["images_per_s"] for r in runs],
        },
    )


def epoch_rate(cfg: DataConfig, info, *, batch: int, epochs: int) -> float:
    """Training images/s of fresh loaders over `epochs` epochs, after a first epoch that is not timed (it fills
    the cache where there is one, and is what every later epoch of a run no longer pays)."""
    loaders = build_loaders(cfg, info, micro_batch=batch, rank=0, world_size=1)
    loaders.set_epoch(0)
    for _ in loaders.train:
        pass
    start, images = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        loaders.set_epoch(epoch)
        images += sum(len(labels) for _, labels in loaders.train)
    return images / (time.perf_counter() - start)


def view_cache(session: Session) -> dict:
    cfg = VIEW_CACHE_DATA
    info = prepare_data(cfg)
    epochs = 2
    cached, fresh = interleave(
        lambda: epoch_rate(cfg, info, batch=VIEW_CACHE_BATCH, epochs=epochs),
        lambda: epoch_rate(replace(cfg, view_cache_bytes=0), info, batch=VIEW_CACHE_BATCH, epochs=epochs),
        session.preset.repetitions,
    )
    return result(
        paired_ratios(cached, fresh),
        VIEW_CACHE_GOAL,
        details={
            "cached_images_per_s": spread(cached).median,
            "decoded_images_per_s": spread(fresh).median,
            "data": f"shapes, {cfg.image_size} px, {cfg.augment}, batch {VIEW_CACHE_BATCH}, in-process",
            "timed_epochs": epochs,
        },
    )
