"""What the data side is asked for (`DataConfig`, derived from a run spec by `data_config`) and what the
preflight found (`DatasetInfo`, which travels to every rank so that none lists or checks the data again)."""

from __future__ import annotations

from dataclasses import dataclass

from suite.data.decode import IMAGENET_MIN_CROP_SCALE
from suite.data.registry import default_min_crop_scale
from suite.spec import RunSpec

# The folders of the ImageNet layout. A run uses three splits: `train` (what the optimizer sees), `select` (held
# out from the train folder, stratified by class: every decision of the run) and `test` (the val folder,
# reported, untouched by any decision); see `select_split`.
SPLITS = ("train", "val")


@dataclass(frozen=True)
class DataConfig:
    backend: str = "shapes"
    # imagefolder: root holding train/<class>/*.JPEG and val/<class>/*.JPEG; shapes: where the generated set
    # lives (None: `$RESNET_BENCH_DATA/shapes-v3`, else `~/.cache/resnet-bench/shapes-v3`).
    data_dir: str | None = None
    image_size: int = 32
    # synthetic: default 10; shapes: fixed by the generator; imagefolder: from the folders (must match if given)
    num_classes: int | None = None
    synthetic_train_size: int = 1024  # samples per epoch for the synthetic backend
    synthetic_val_size: int = 256  # the synthetic test stream (the select stream is cut from the train size)
    # Share of each class's training images held out as the select split (at least one per class, never all).
    select_fraction: float = 0.1
    workers: int = 2  # DataLoader worker processes per rank (0 = in-process)
    augment: str = "random_resized_crop"  # suite/vocab.py AUGMENTS (suite/data/decode.py)
    decode: str = "cpu"  # suite/vocab.py DECODES: gpu ships bytes (suite/data/device_decode.py)
    stage_dir: str | None = None  # shards: node-local copy made before the first epoch (suite/data/shards.py)
    min_crop_scale: float = IMAGENET_MIN_CROP_SCALE  # RandomResizedCrop scale lower bound
    seed: int = 0
    # About this many images are decoded by the preflight (all of them in smaller sets), in proportion over
    # every class of both splits: listing ImageNet takes seconds, decoding all 1.33 M files would take an
    # hour. A bad file outside the sample is skipped at load time and counted in `Loaders.skipped`.
    verify_limit: int = 4096
    # Where a split's views are the same every epoch (suite/data/decode.py `view_is_fixed`) and fit in this many
    # bytes, each image is decoded once and its view kept, per process (0: decode every epoch). The shapes
    # set's 2,560 training images are 1.1 MB at 12 px and 31 MB at 64 px; ImageNet's 1.28 M are 3.9 GB at 32 px
    # and are decoded afresh each epoch.
    view_cache_bytes: int = 512 * 2**20

    @property
    def dataset(self) -> tuple:
        """What the preflight's listing and sample decode depend on (not the seed, workers or crop): configs
        that differ only in those share one check of the data."""
        return (
            self.backend,
            self.data_dir,
            self.num_classes,
            self.synthetic_train_size,
            self.synthetic_val_size,
            self.verify_limit,
        )


def data_config(spec: RunSpec) -> DataConfig:
    """The data side of a run spec."""
    return DataConfig(
        backend=spec.dataset,
        data_dir=spec.data_dir,
        image_size=spec.image_size,
        num_classes=spec.num_classes,
        workers=spec.loader_workers,
        seed=spec.seed,
        select_fraction=spec.select_fraction,
        augment=spec.augment,
        decode=spec.decode,
        stage_dir=spec.stage_dir,
        # null: the backend's own bound (the generated shapes need whole objects in the crop to be learnable).
        min_crop_scale=(
            default_min_crop_scale(spec.dataset) if spec.min_crop_scale is None else spec.min_crop_scale
        ),
    )


@dataclass(frozen=True)
class DatasetInfo:
    """What the preflight found, and everything a rank needs to load it (`build_loaders` lists no directory).

    Travels to Ray workers and ranks with the run's config as a plain, JSON-safe dict (`to_dict`/`from_dict`).
    """

    backend: str
    root: str | None
    num_classes: int
    train_size: int
    val_size: int
    corrupt_files: tuple[str, ...]  # files found undecodable in the preflight (skipped)
    classes: tuple[str, ...] = ()  # class folder names in label order (empty for synthetic)
    # The folder index (empty for synthetic), corrupt files excluded: per split in SPLITS order, per label,
    # the sorted file names inside <root>/<split>/<class>/. Names rather than paths keep it compact: ImageNet's
    # 1.33 M images are about 30 MB as JSON.
    files: tuple[tuple[tuple[str, ...], ...], ...] = ()
    # The shards backend: (split, its shards as (file name, samples)) for train, select and val, from the index.
    shards: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()

    def samples(self, split: str) -> list[tuple[str, int]]:
        """`split`'s (path relative to `root`, label) pairs, in the order every rank indexes them."""
        groups = self.files[SPLITS.index(split)]
        return [
            (f"{split}/{self.classes[label]}/{name}", label)
            for label, names in enumerate(groups)
            for name in names
        ]

    def shards_of(self, split: str) -> tuple[tuple[str, int], ...]:
        """The shards backend: `split`'s shards as (file name, samples)."""
        return dict(self.shards)[split]

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "root": self.root,
            "num_classes": self.num_classes,
            "train_size": self.train_size,
            "val_size": self.val_size,
            "corrupt_files": list(self.corrupt_files),
            "classes": list(self.classes),
            "files": {SPLITS[i]: [list(names) for names in groups] for i, groups in enumerate(self.files)},
            "shards": {split: [list(shard) for shard in shards] for split, shards in self.shards},
        }

    @classmethod
    def from_dict(cls, d: dict) -> DatasetInfo:
        files = d["files"]
        return cls(
            backend=d["backend"],
            root=d["root"],
            num_classes=d["num_classes"],
            train_size=d["train_size"],
            val_size=d["val_size"],
            corrupt_files=tuple(d["corrupt_files"]),
            classes=tuple(d["classes"]),
            files=tuple(tuple(tuple(names) for names in files[split]) for split in SPLITS) if files else (),
            shards=tuple(
                (split, tuple((name, int(n)) for name, n in shards))
                for split, shards in d.get("shards", {}).items()
            ),
        )
