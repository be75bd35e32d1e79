"""The shapes backend: a small, learnable ImageFolder of generated JPEGs, no download.

Ten classes of one object per 64-px frame, generated on first use (deterministically, on every machine) and
then read as an image folder: the preflight and the loaders are the imagefolder backend's.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from suite.data import imagefolder
from suite.data.config import SPLITS, DataConfig, DatasetInfo
from suite.errors import UserError, check

# The shapes set holds one object per 64-px frame, often half its width: an 8 % crop would usually cut it away
# and leave the label unlearnable. Measured on a draft of the generator with a width-8 ResNet-50 at 32 px (SGD
# lr 0.02, momentum 0.9, batch 32, cosine over 20 epochs): val top-1 after 12 epochs 44 % with scale 0.35, 57 %
# with 0.5 (chance 10 %). On shapes-v2, 12 epochs (~2 min on 2 CPU cores) reached 58 %.
MIN_CROP_SCALE = 0.5


# The generator's version is in the directory name: a changed generator gets a new directory, so a cached set
# from an older one is never mistaken for it (v1, an early draft, stayed near chance for this model and budget;
# v2 had 64 val images per class, too few for a test split).
SHAPES_DIRNAME = "shapes-v3"
SHAPES_CLASSES = ("bar", "circle", "crescent", "cross", "ell", "frame", "ring", "square", "star", "triangle")
SHAPES_IMAGE_SIZE = 64
# val/ is the test split: 2,100 images make one run's 95 % binomial interval at most ±2 pp around 70 % top-1
# (1.96 · √(0.7 · 0.3 / 2100) = 0.0196). The select split is cut from train/ by the loaders.
SHAPES_PER_CLASS = {"train": 256, "val": 210}
SHAPES_SEED = 2024  # fixed: every run, on every machine, sees the same images
_MARKER = "COMPLETE.json"


def shapes_root(cfg: DataConfig) -> Path:
    """Where the shapes set lives: `data_dir`, else `$RESNET_BENCH_DATA/shapes-v3`, else the user cache."""
    if cfg.data_dir is not None:
        return Path(os.path.abspath(os.path.expanduser(cfg.data_dir)))
    base = os.environ.get("RESNET_BENCH_DATA") or os.path.join("~", ".cache", "resnet-bench")
    return Path(os.path.abspath(os.path.expanduser(base))) / SHAPES_DIRNAME


def preflight(cfg: DataConfig) -> DatasetInfo:
    check(
        cfg.num_classes in (None, len(SHAPES_CLASSES)),
        f"num_classes={cfg.num_classes} does not fit the shapes set, which has {len(SHAPES_CLASSES)} "
        f"classes; accepted: null or {len(SHAPES_CLASSES)}",
    )
    return imagefolder.preflight_folder(ensure_shapes(shapes_root(cfg)), cfg)


loaders = imagefolder.loaders  # a generated image folder loads as any other


def ensure_shapes(root: Path) -> Path:
    """Generate the shapes set at `root` unless a complete one is there; return `root`.

    Safe for concurrent callers: a file lock beside `root` keeps processes on one host from generating it
    twice, and the set is written into a temporary directory beside `root` and renamed into place only once
    complete (rename is atomic), so a half-written set is never seen; a process that loses the rename (the lock
    does not reach it, e.g. another host on a network file system) uses the winner's set.
    """
    if _is_complete(root):
        return root
    try:
        _check_shapes_target(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / f".{root.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _is_complete(root):
                _check_shapes_target(root)
                _generate_and_publish(root)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(
            f"cannot write the shapes set at {root}: {e.strerror}; accepted: a data_dir or $RESNET_BENCH_DATA "
            "on a writable file system with ~20 MB free"
        ) from None
    return root


def _is_complete(root: Path) -> bool:
    return (root / _MARKER).is_file()


def _check_shapes_target(root: Path) -> None:
    check(not os.path.isfile(root), f"shapes data_dir {root} is a file; accepted: a directory (or none yet)")
    check(
        not os.path.isdir(root) or not imagefolder.list_dir(root, hidden=True),
        f"{root} exists but holds no complete shapes set (no {_MARKER}); accepted: an empty or missing "
        "directory, where it is generated, or a complete set",
    )


def _generate_and_publish(root: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        generate_shapes(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must stay readable by others
        try:
            os.rename(tmp, root)  # atomic; also replaces an empty directory
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _is_complete(root):
                raise
            # Another process published first: use theirs (the same images, by construction).
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate_shapes(dest: Path, *, per_class: dict[str, int] | None = None, seed: int = SHAPES_SEED) -> None:
    """Write the shapes set as an ImageFolder of JPEGs under `dest`, the completion marker last.

    Each image is a function of (seed, split, class, index) only, so the set is the same on every machine and
    for every process that generates it.
    """
    per_class = per_class or SHAPES_PER_CLASS
    for s, split in enumerate(SPLITS):
        for c, name in enumerate(SHAPES_CLASSES):
            folder = dest / split / name
            folder.mkdir(parents=True)
            for i in range(per_class[split]):
                rng = np.random.default_rng((seed, s, c, i))
                draw_shape(name, rng).save(folder / f"{i:04d}.jpg", quality=90)
    marker = {"version": SHAPES_DIRNAME, "seed": seed, "classes": SHAPES_CLASSES, "per_class": per_class}
    (dest / _MARKER).write_text(json.dumps(marker, indent=1) + "\n")


_SUPERSAMPLE = 4  # draw masks at 4× and shrink: anti-aliased edges, like a photographed object's


def draw_shape(name: str, rng: np.random.Generator, size: int = SHAPES_IMAGE_SIZE) -> Image.Image:
    """One image of class `name`: the shape in a random colour, size, position and rotation over a noisy
    background of a contrasting colour."""
    # Large and near the middle (at most half the free room off-centre), so the training crops (scale ≥ 0.5)
    # mostly keep the object: with small objects anywhere in the frame, the same model and budget stayed near
    # chance for half its epochs (see SHAPES_MIN_CROP_SCALE).
    radius = rng.uniform(0.3, 0.45) * size
    centre = size / 2 + rng.uniform(-1, 1, 2) * (size / 2 - radius) / 2
    angle = rng.uniform(0, 2 * math.pi)
    big = size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    _SHAPE_DRAWERS[name](ImageDraw.Draw(mask), _Frame(centre * _SUPERSAMPLE, radius * _SUPERSAMPLE, angle))
    alpha = np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255
    background, foreground = _contrasting_colours(rng)
    noise = rng.normal(0, rng.uniform(2, 8), (size, size, 3))
    pixels = background * (1 - alpha) + foreground * alpha + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        background, foreground = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if np.linalg.norm(background - foreground) > 150:
            return background, foreground


@dataclass(frozen=True)
class _Frame:
    """A shape's placement: centre, scale (radius) and rotation; maps unit coordinates to pixels."""

    centre: np.ndarray
    radius: float
    angle: float

    def points(self, unit: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        cx, cy = self.centre
        return [(cx + self.radius * (x * c - y * s), cy + self.radius * (x * s + y * c)) for x, y in unit]

    def disc(
        self, draw: ImageDraw.ImageDraw, r: float, fill: int, offset: tuple[float, float] = (0, 0)
    ) -> None:
        (x, y), rr = self.points([offset])[0], r * self.radius
        draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=fill)

    def polygon(self, draw: ImageDraw.ImageDraw, unit: list[tuple[float, float]], fill: int = 255) -> None:
        draw.polygon(self.points(unit), fill=fill)


def _rect(half_w: float, half_h: float) -> list[tuple[float, float]]:
    return [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]


def _regular(n: int, r: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [
        (r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(draw, f: _Frame) -> None:
    outer, inner = _regular(5), _regular(5, 0.4, -math.pi / 2 + math.pi / 5)
    f.polygon(draw, [p for pair in zip(outer, inner, strict=True) for p in pair])


def _ring(draw, f: _Frame) -> None:
    f.disc(draw, 1.0, 255)
    f.disc(draw, 0.6, 0)


def _frame(draw, f: _Frame) -> None:
    f.polygon(draw, _rect(0.8, 0.8))
    f.polygon(draw, _rect(0.45, 0.45), 0)


def _crescent(draw, f: _Frame) -> None:
    f.disc(draw, 1.0, 255)
    f.disc(draw, 0.85, 0, offset=(0.5, 0))


def _cross(draw, f: _Frame) -> None:
    f.polygon(draw, _rect(1.0, 0.27))
    f.polygon(draw, _rect(0.27, 1.0))


def _ell(draw, f: _Frame) -> None:
    t = 0.55  # arm thickness, in units of the radius
    f.polygon(draw, [(-1, -1), (-1 + t, -1), (-1 + t, 1 - t), (1, 1 - t), (1, 1), (-1, 1)])


_SHAPE_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, _Frame], None]] = {
    "bar": lambda d, f: f.polygon(d, _rect(1.0, 0.25)),
    "circle": lambda d, f: f.disc(d, 0.9, 255),
    "crescent": _crescent,
    "cross": _cross,
    "ell": _ell,
    "frame": _frame,
    "ring": _ring,
    "square": lambda d, f: f.polygon(d, _rect(0.75, 0.75)),
    "star": _star,
    "triangle": lambda d, f: f.polygon(d, _regular(3)),
}
