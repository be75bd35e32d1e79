"""`input_scaling`: how the input path's cost grows with the dataset, on generated folders of small JPEGs.

- Start-up, per size: the preflight of a tree without its manifest (listing every folder, a stat per file for
  its size, the sample decode, the manifest written) against the preflight of the same tree with it (the
  manifest read, one stat per folder). The ratio is the first over the later at the largest size.
- Throughput: the loader's training images/s per worker on the folder layout against the same images packed
  as tar shards (`resnet-bench data shard`), one worker each, interleaved.

On a local disk with a warm page cache this is what each layout costs the CPU (an open and a read per image,
against one streamed tar per 1,000 images); a parallel file system adds a metadata round trip per file to
the folder side, which these numbers do not contain.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.pipeline import loader_rate
from benchmarks.session import Session
from benchmarks.stats import Goal, check, interleave, paired_ratios, result, spread
from suite.data.config import DataConfig
from suite.data.loaders import build_loaders
from suite.data.manifest import places
from suite.data.preflight import prepare_data
from suite.data.shard_writer import write_shards

GOAL = Goal(">=", 10.0)  # first-run start-up ÷ later-run start-up, at the largest size
SHARDS_GOAL = Goal(">=", 1.0)  # shard loader images/s per worker ÷ folder loader's
CLASSES = 100
PIXELS = 32  # CIFAR-sized JPEGs: the per-file costs dominate, as they do for the small files of big sets
DISTINCT = 256  # encoded images the files cycle through (what is measured is per file, not per pixel)


def small_jpeg_tree(root: Path, images: int, *, seed: int = 0) -> Path:
    """An ImageNet-layout folder of `images` training JPEGs over CLASSES classes, plus a tenth as many val."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(DISTINCT):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (PIXELS, PIXELS, 3), dtype=np.uint8)).save(
            buffer, "JPEG", quality=90
        )
        blobs.append(buffer.getvalue())
    for split, count in (("train", images), ("val", max(CLASSES, images // 10))):
        for c in range(CLASSES):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(c, count, CLASSES):
                (folder / f"{i:07d}.JPEG").write_bytes(blobs[i % DISTINCT])
    return root


def startup_seconds(root: Path, *, fresh: bool) -> float:
    """One preflight of `root`, without its manifest (`fresh`: it is removed first) or with it."""
    if fresh:
        for path in places(root):
            path.unlink(missing_ok=True)
    start = time.perf_counter()
    prepare_data(DataConfig(backend="imagefolder", data_dir=str(root), image_size=PIXELS))
    return time.perf_counter() - start


def train_rate(backend: str, data_dir: Path, *, batch: int, batches: int, epoch: int) -> float:
    cfg = DataConfig(
        backend=backend, data_dir=str(data_dir), image_size=PIXELS, workers=1, augment="pad_crop"
    )
    loaders = build_loaders(cfg, prepare_data(cfg), micro_batch=batch, rank=0, world_size=1)
    loaders.set_epoch(epoch)
    return loader_rate(loaders.train, batches, cfg.workers)


def input_scaling(session: Session) -> dict:
    preset = session.preset
    sizes, details, ratios = preset.scaling_sizes, {}, []
    for images in sizes:
        root = session.workdir / f"jpegs-{images}"
        session.log(f"input_scaling: writing {images:,} JPEGs")
        small_jpeg_tree(root, images)
        first, later = interleave(
            lambda root=root: startup_seconds(root, fresh=True),
            lambda root=root: startup_seconds(root, fresh=False),
            preset.repetitions,
        )
        details[f"startup_s_{images}"] = {"first": asdict(spread(first)), "later": asdict(spread(later))}
        ratios = paired_ratios(first, later)  # the largest size's are the ones reported
    shards = session.workdir / "shards"
    start = time.perf_counter()
    write_shards(str(root), str(shards))
    details["shard_write_s"] = time.perf_counter() - start
    epochs = iter(range(10**6))
    batch, batches = preset.scaling_batch, preset.scaling_batches
    packed, folder = interleave(
        lambda: train_rate("shards", shards, batch=batch, batches=batches, epoch=next(epochs)),
        lambda: train_rate("imagefolder", root, batch=batch, batches=batches, epoch=next(epochs)),
        preset.repetitions,
    )
    details.update(
        images=list(sizes),
        shards_images_per_s_per_worker=spread(packed).median,
        folder_images_per_s_per_worker=spread(folder).median,
        image_px=PIXELS,
    )
    return result(
        ratios,
        GOAL,
        extra=[check("shards_vs_folder", paired_ratios(packed, folder), SHARDS_GOAL)],
        details=details,
    )
