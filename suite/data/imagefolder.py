"""The imagefolder backend: the ImageNet layout, `<root>/{train,val}/<class>/*.jpg|*.jpeg|*.png`.

The preflight lists the tree once per dataset (`scan_image_folder`, kept in its manifest: suite/data/manifest.py)
and puts the index in `DatasetInfo`; every rank loads from that index. `list_dir` is the package's one
directory-listing function, so listings are easy to count.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

from suite.data import manifest
from suite.data.config import SPLITS, DataConfig, DatasetInfo
from suite.data.decode import (
    DECODE_ERRORS,
    IMAGENET_MIN_CROP_SCALE,
    augment_view,
    decode_view,
    load_image,
    view_is_fixed,
)
from suite.data.device_decode import read_raw
from suite.data.loaders import Counted, EpochTagged, Loaders, SkipCounter, data_loader, select_split, sharded
from suite.data.preflight import find_corrupt
from suite.errors import UserError, check

MIN_CROP_SCALE = IMAGENET_MIN_CROP_SCALE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # compared lower-cased: ImageNet's files are *.JPEG

LAYOUT = (
    "accepted: a directory holding train/<class>/*.jpg|*.jpeg|*.png and val/<class>/*.jpg|*.jpeg|*.png "
    "with the same class folders in both"
)


def preflight(cfg: DataConfig) -> DatasetInfo:
    check(cfg.data_dir is not None, f"the imagefolder backend needs data_dir; {LAYOUT}")
    return preflight_folder(Path(os.path.abspath(os.path.expanduser(cfg.data_dir))), cfg)


def preflight_folder(root: Path, cfg: DataConfig) -> DatasetInfo:
    """Describe the folder at `root` from its manifest (suite/data/manifest.py), or scan it, decode a sample
    and write one: index included, corrupt files out."""
    found, why = manifest.load(root)
    if why:
        print(f"[resnet-bench] listing {root} again: {why}", flush=True)
    changed = found is None
    if found is None:
        found = index_folder(root, cfg.verify_limit)
    elif found.verify_limit != cfg.verify_limit:  # the tree is known; only the sample decode is redone
        found = replace(
            found, verify_limit=cfg.verify_limit, corrupt_files=_find_corrupt(found, cfg.verify_limit)
        )
        changed = True
    classes, files = found.classes, found.files
    check(
        cfg.num_classes is None or cfg.num_classes == len(classes),
        f"num_classes={cfg.num_classes} but {root} has {len(classes)} class folders; accepted: null or "
        f"{len(classes)}",
    )
    if changed:  # only once every check passed: bad input writes nothing
        _save(found)
    bad = set(found.corrupt_files)
    index = tuple(
        tuple(
            tuple(file for file in names if os.path.join(root, split, name, file) not in bad)
            for name, names in zip(classes, files[split], strict=True)
        )
        for split in SPLITS
    )
    train, val = (sum(len(names) for names in groups) for groups in index)
    return DatasetInfo(
        backend=cfg.backend,
        root=str(root),
        num_classes=len(classes),
        train_size=train,
        val_size=val,
        corrupt_files=found.corrupt_files,
        classes=classes,
        files=index,
    )


def index_folder(root: Path, verify_limit: int) -> manifest.Manifest:
    """List the folder at `root` (sizes included) and decode a sample of it; raises `UserError` for a broken
    layout or too many corrupt files. Nothing is written (`_save`, or `write_index` on purpose)."""
    classes, files, sizes, stamps = scan_image_folder(root)
    found = manifest.Manifest(
        root=str(root),
        fingerprint=manifest.fingerprint(root, classes, stamps),
        classes=classes,
        files=files,
        sizes=sizes,
        verify_limit=verify_limit,
        corrupt_files=(),
    )
    return replace(found, corrupt_files=_find_corrupt(found, verify_limit))


def write_index(data_dir: str, verify_limit: int) -> tuple[manifest.Manifest, Path]:
    """`resnet-bench data index DIR`: list and check the folder now, and write its manifest."""
    check(verify_limit >= 1, f"--verify-limit must be ≥ 1, got {verify_limit}")
    root = Path(os.path.abspath(os.path.expanduser(data_dir)))
    found = index_folder(root, verify_limit)
    try:
        return found, manifest.save(found)
    except OSError as e:
        raise UserError(f"cannot write the manifest of {root}: {e.strerror}; accepted: {_WRITABLE}") from None


_WRITABLE = "a writable data folder or $RESNET_BENCH_CACHE"


def _find_corrupt(found: manifest.Manifest, limit: int) -> tuple[str, ...]:
    groups = [
        [os.path.join(found.root, split, name, file) for file in names]
        for split in SPLITS
        for name, names in zip(found.classes, found.files[split], strict=True)
    ]
    return find_corrupt(Path(found.root), groups, limit)


def _save(found: manifest.Manifest) -> None:
    """A run that cannot write the manifest still runs: it lists the tree again next time, and says why."""
    try:
        manifest.save(found)
    except OSError as e:
        print(f"[resnet-bench] no manifest written for {found.root} ({e.strerror}; {_WRITABLE})", flush=True)


def scan_image_folder(root: Path):
    """List an ImageNet-layout folder: class names (sorted, as torchvision's ImageFolder) and, per split and
    label, the sorted image file names and their sizes, with each folder's stamp taken before it was listed
    (suite/data/manifest.py). Raises `UserError` for every layout problem, naming the path."""
    check(os.path.lexists(root), f"data directory {root} does not exist; {LAYOUT}")
    check(os.path.isdir(root), f"data directory {root} is not a directory; {LAYOUT}")
    top = {e.name: e for e in list_dir(root)}
    splits, stamps = {}, {}
    for split in SPLITS:
        path = root / split
        check(
            split in top and top[split].is_dir(),
            f"{root} has no {split}/ directory" + ("" if top else " (it is empty)") + f"; {LAYOUT}",
        )
        stamps[split] = manifest.stamp(root, split)
        splits[split] = {e.name: path / e.name for e in list_dir(path) if e.is_dir()}
        check(bool(splits[split]), f"{path} holds no class folders; {LAYOUT}")
    train, val = set(splits["train"]), set(splits["val"])
    for only, here, there in ((train - val, "train", "val"), (val - train, "val", "train")):
        if only:
            raise UserError(
                f"class folder {root / here / min(only)} has no counterpart in {root / there}; {LAYOUT}"
            )
    classes = tuple(sorted(train))
    files, sizes = {}, {}
    for split in SPLITS:
        files[split], sizes[split] = [], []
        for name in classes:
            folder = splits[split][name]
            stamps[f"{split}/{name}"] = manifest.stamp(root, f"{split}/{name}")
            # One stat per file, for its size: paid once per dataset, when the manifest is written.
            images = [e for e in list_dir(folder) if _is_image(e)]
            check(bool(images), f"class folder {folder} holds no images; {LAYOUT}")
            files[split].append([e.name for e in images])
            sizes[split].append([e.stat().st_size for e in images])
    return classes, files, sizes, stamps


def list_dir(path: Path, *, hidden: bool = False) -> list[os.DirEntry]:
    """The entries of a directory (the visible ones unless `hidden`), sorted by name; an unreadable directory
    is a `UserError`."""
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if hidden or not e.name.startswith(".")), key=lambda e: e.name)
    except PermissionError:
        raise UserError(
            f"cannot list {path}: permission denied; accepted: directories this user can read and enter"
        ) from None


def _is_image(entry: os.DirEntry) -> bool:
    return os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file()


def loaders(cfg: DataConfig, info: DatasetInfo, *, micro_batch: int, rank: int, world_size: int) -> Loaders:
    """This rank's loaders over `info`'s index. Every rank indexes the same list (the preflight's), so shards
    are disjoint and every rank runs the same number of steps; a file that broke or vanished since the
    preflight is skipped at load time and counted. The select split is cut from the train folder
    (`select_split`); the test split is the val folder, whole."""
    train_samples, select_samples = select_split(info.samples("train"), cfg.select_fraction, cfg.seed)
    train_set = folder_dataset(cfg, info.root, train_samples, train=True)
    # DistributedSampler semantics (torchvision's references): each rank a disjoint shard, reshuffled by
    # set_epoch from a seed shared by all ranks; drop_last so every rank runs the same number of steps.
    sampler = EpochTagged(
        DistributedSampler(
            train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    )
    counter = SkipCounter()
    train = Counted(data_loader(train_set, sampler, micro_batch, cfg, drop_last=True), counter)
    held_out = []
    for samples in (select_samples, info.samples("val")):
        dataset = folder_dataset(cfg, info.root, samples, train=False)
        keys = [(i, 0) for i in sharded(len(dataset), rank, world_size)]
        held_out.append(Counted(data_loader(dataset, keys, micro_batch, cfg, drop_last=False), counter))
    return Loaders(train, *held_out, set_epoch=sampler.set_epoch, skipped=counter)


def folder_dataset(
    cfg: DataConfig, root: str, samples: list[tuple[str, int]], *, train: bool
) -> FolderDataset:
    """`samples` decoded as `cfg` asks: the training crop (`train`) or the evaluation view."""
    return FolderDataset(
        root,
        samples,
        image_size=cfg.image_size,
        train=train,
        augment=cfg.augment,
        min_crop_scale=cfg.min_crop_scale,
        seed=cfg.seed,
        decode=cfg.decode,
        cache_bytes=cfg.view_cache_bytes,
    )


class FolderDataset(Dataset):
    """(path relative to `root`, label) pairs decoded with the standard recipe; an undecodable or vanished
    file gives `None` (skipped and counted by the collate function) instead of killing the run hours in.

    Where every image's view is the same each epoch (`view_is_fixed`: evaluation, and pad_crop training) and
    the split's views fit in `cache_bytes`, each image is decoded once and its view kept in memory; the
    epoch's shift and flip are drawn on the kept view, the same pixels a fresh decode gives. Each DataLoader
    worker process keeps its own copy.
    """

    def __init__(
        self,
        root: str,
        samples: list[tuple[str, int]],
        *,
        image_size: int,
        train: bool,
        augment: str = "random_resized_crop",
        min_crop_scale: float = IMAGENET_MIN_CROP_SCALE,
        seed: int = 0,
        decode: str = "cpu",
        cache_bytes: int = 0,
    ):
        self.root, self.samples, self.image_size, self.train = root, samples, image_size, train
        self.augment, self.min_crop_scale, self.seed = augment, min_crop_scale, seed
        # gpu: the file's bytes and its view's parameters; the device decodes (suite/data/device_decode.py)
        self.load = read_raw if decode == "gpu" else load_image
        view_bytes = image_size * image_size * 3
        self.views: dict[int, np.ndarray] | None = (
            {}
            if decode == "cpu"
            and view_is_fixed(augment, train=train)
            and 0 < len(samples) * view_bytes <= cache_bytes
            else None
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        path, label = self.samples[index]
        rng = random.Random(f"{self.seed}/{epoch}/{index}") if self.train else None
        try:
            if self.views is not None:
                return self._cached(index, path, rng), label
            return (
                self.load(
                    os.path.join(self.root, path),
                    self.image_size,
                    rng=rng,
                    augment=self.augment,
                    min_crop_scale=self.min_crop_scale,
                ),
                label,
            )
        except DECODE_ERRORS:
            return None

    def _cached(self, index: int, path: str, rng: random.Random | None) -> np.ndarray:
        view = self.views.get(index)
        if view is None:
            # A file that fails to decode is not kept: it is tried (and counted) again next epoch, as uncached.
            view = decode_view(os.path.join(self.root, path), self.image_size, augment=self.augment)
            self.views[index] = view
        return view if rng is None else augment_view(view, rng, self.augment)
