"""The image pipeline: decode and crop one image, the standard ImageNet recipe in one fused step.

The recipe is Goyal et al. 2017 ("Accurate, Large Minibatch SGD"; torchvision's
`references/classification/presets.py`): RandomResizedCrop + horizontal flip for training,
Resize(size·256/224) + CenterCrop for evaluation, ImageNet mean/std normalisation (done per batch, by the
loaders' collate). Here the crop box is drawn from the header's size alone, the JPEG is decoded at the largest DCT reduction that still
leaves the box at least as large as the output (`Image.draft`), and the box is resized straight to the output.
Same distribution of images, a fraction of the decode work.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image

# ImageNet channel statistics, as used by torchvision's pretrained models and reference scripts.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Evaluation resizes the shorter side to size·256/224, then centre-crops `size` (the 256 → 224 convention of
# Krizhevsky et al. 2012, kept by torchvision's references for every input size).
EVAL_RESIZE_RATIO = 256 / 224
# RandomResizedCrop's aspect-ratio range and ImageNet's area range lower bound (Szegedy et al. 2015, "Going
# deeper with convolutions"; torchvision's defaults).
CROP_RATIO = (3 / 4, 4 / 3)
IMAGENET_MIN_CROP_SCALE = 0.08

# What PIL raises for a file it cannot decode: unidentified or truncated data (OSError, which also covers a
# file that vanished or became unreadable since the preflight), broken headers (SyntaxError, ValueError, EOFError),
# absurd sizes (DecompressionBombError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels of the full-size image


def load_image(
    path: str,
    size: int,
    *,
    rng: random.Random | None = None,
    augment: str = "random_resized_crop",
    min_crop_scale: float = IMAGENET_MIN_CROP_SCALE,
) -> np.ndarray:
    """Decode `path` to a `size`×`size` uint8 RGB array (HWC): with `rng`, the training crop of `augment`
    (suite/vocab.py AUGMENTS) and a flip; without, its evaluation view (random_resized_crop:
    Resize(size·256/224) + CenterCrop(size); pad_crop: the whole image resized)."""
    view = decode_view(path, size, rng=rng, augment=augment, min_crop_scale=min_crop_scale)
    return view if rng is None else augment_view(view, rng, augment)


def decode_view(
    path: str,
    size: int,
    *,
    rng: random.Random | None = None,
    augment: str = "random_resized_crop",
    min_crop_scale: float = IMAGENET_MIN_CROP_SCALE,
) -> np.ndarray:
    """The decode half of `load_image`: the `size`×`size` view before its per-epoch shift and flip. It draws
    from `rng` only where the view itself is random (`view_is_fixed`)."""
    with Image.open(path) as image:
        box = view_box(*image.size, size, rng=rng, augment=augment, min_crop_scale=min_crop_scale)
        image, box = _draft(image, box, size)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box))


def augment_view(view: np.ndarray, rng: random.Random, augment: str) -> np.ndarray:
    """The augmentation half of `load_image`: pad_crop's shift, then the flip, drawn from `rng` in that order."""
    if augment == "pad_crop":
        view = pad_crop(view, rng)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return view


def view_is_fixed(augment: str, *, train: bool) -> bool:
    """Whether an image's view before `augment_view` is the same every epoch: every evaluation view, and
    pad_crop's training view (the whole image resized), so decoding it once serves the whole run."""
    return not train or augment == "pad_crop"


def view_box(
    width: int, height: int, size: int, *, rng: random.Random | None, augment: str, min_crop_scale: float
) -> Box:
    """The part of a `width`×`height` image that becomes the `size`×`size` view (drawn with `rng` in training)."""
    if augment == "pad_crop":
        return (0, 0, width, height)
    if rng is None:
        return eval_box(width, height, size)
    return random_resized_box(width, height, rng, scale=(min_crop_scale, 1.0))


def pad_crop(view: np.ndarray, rng: random.Random) -> np.ndarray:
    """Zero-pad by 1/8 of the side and cut a random crop of the original size: He et al. 2016's 4 px at 32 px
    (Sec. 4.2), the same shift relative to the image at other small sizes."""
    size = view.shape[0]
    pad = max(1, size // 8)
    left, top = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
    # The crop of the padded image, written as the image shifted by (top − pad, left − pad) into zeros: the
    # same pixels as np.pad and a slice, without np.pad's cost per call (most of a cached epoch's loading).
    dy, dx = top - pad, left - pad
    out = np.zeros((size, size, *view.shape[2:]), dtype=view.dtype)
    src = view[max(dy, 0) : size + dy, max(dx, 0) : size + dx]
    out[max(-dy, 0) : max(-dy, 0) + src.shape[0], max(-dx, 0) : max(-dx, 0) + src.shape[1]] = src
    return out


def _draft(image: Image.Image, box: Box, size: int) -> tuple[Image.Image, Box]:
    """Ask the JPEG decoder for the largest power-of-two reduction (libjpeg offers 1/2, 1/4, 1/8) under which
    `box` still spans at least `size` pixels on its shorter side, so the final resize only ever shrinks, as
    it would from the full-size decode. Returns the image and `box` in the reduced image's pixels."""
    shorter = min(box[2] - box[0], box[3] - box[1])
    reduction = 1
    while reduction < 8 and shorter / (2 * reduction) >= size:
        reduction *= 2
    if reduction == 1:
        return image, box
    width, height = image.size
    # PIL picks the largest reduction r in {8, 4, 2, 1} with r ≤ min(W // w, H // h); asking for W // reduction
    # makes that exactly `reduction`. Non-JPEG images ignore the request (returns None).
    drafted = image.draft("RGB", (width // reduction, height // reduction))
    if drafted is None:
        return image, box
    scale = width / drafted[1][2]  # the reduction PIL applied
    return image, (box[0] / scale, box[1] / scale, box[2] / scale, box[3] / scale)


def eval_box(width: int, height: int, size: int) -> Box:
    """Resize(round(size·256/224)) then CenterCrop(size), as one box in the original image.

    The integer roundings are torchvision's (`Resize` truncates the longer side, `CenterCrop` rounds the
    offsets), so resizing this box to `size` gives the pixels torchvision's two steps give."""
    short, long = sorted((width, height))
    resized_short = round(size * EVAL_RESIZE_RATIO)
    resized_long = int(resized_short * long / short)
    new_w, new_h = (resized_short, resized_long) if width <= height else (resized_long, resized_short)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def random_resized_box(width: int, height: int, rng: random.Random, *, scale: tuple[float, float]) -> Box:
    """torchvision's `RandomResizedCrop.get_params` (same algorithm, our RNG): ten tries at a crop of area
    scale·W·H and log-uniform aspect ratio in [3/4, 4/3], then the central crop of the clamped ratio."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return (left, top, left + w, top + h)
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)
