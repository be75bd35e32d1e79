"""`decode: gpu`: the loaders ship JPEG bytes, and the device decodes, crops, flips and normalises each batch.

At 2,000–7,000 ResNet-50 images/s per GPU a node's CPUs cannot PIL-decode fast enough; nvJPEG can. The
loader workers only read each file's bytes and its header: the crop box, the flip and the pad offsets are
drawn there from the header's size with the same per-image RNG as the CPU path (suite/data/decode.py), so a
sample's augmentation stays a function of (seed, epoch, index). `torchvision.io.decode_jpeg` then decodes the
whole batch on the device, and the crop is resized there (bilinear, antialiased): the same crop distribution
as the CPU path, with the device's resampling instead of PIL's.

A batch arrives as a `RawBatch` in place of the image tensor: `.to(device, dtype)` does the decode, so the
trainer's and the evaluation's `images.to(...)` need no second code path. Non-JPEG files (PNG) decode on the
host, as torchvision decodes only JPEG on the GPU.
"""

from __future__ import annotations

import io
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from suite.data.decode import IMAGENET_MEAN, IMAGENET_STD, view_box

JPEG_MAGIC = b"\xff\xd8"


def raw_item(data: bytes, size: int, *, rng: random.Random | None, augment: str, min_crop_scale: float):
    """The bytes of one image and what the device needs to make its view: (bytes, box, flip, pad offsets).

    Raises what PIL raises for a header it cannot read (the caller skips and counts the image)."""
    with Image.open(io.BytesIO(data)) as image:
        box = view_box(*image.size, size, rng=rng, augment=augment, min_crop_scale=min_crop_scale)
    pad = max(1, size // 8)
    shift = (
        (rng.randint(0, 2 * pad), rng.randint(0, 2 * pad))
        if rng is not None and augment == "pad_crop"
        else None
    )
    flip = rng is not None and rng.random() < 0.5
    return np.frombuffer(data, dtype=np.uint8), box, flip, shift


class RawBatch:
    """One batch of JPEG bytes with their views; `.to(device, dtype)` returns the normalised NCHW batch."""

    def __init__(self, items: list, size: int):
        self.items, self.size = items, size

    def __len__(self) -> int:
        return len(self.items)

    def to(
        self,
        device,
        dtype=torch.float32,
        *,
        non_blocking: bool = False,
        memory_format=torch.contiguous_format,
    ):
        device = torch.device(device)
        datas = [torch.from_numpy(item[0].copy()) for item in self.items]
        jpeg = [i for i, d in enumerate(datas) if bytes(d[:2].tolist()) == JPEG_MAGIC]
        decoded: list[torch.Tensor | None] = [None] * len(datas)
        if jpeg:
            where = device if device.type == "cuda" else "cpu"
            for i, image in zip(
                jpeg, decode_jpeg([datas[i] for i in jpeg], mode=ImageReadMode.RGB, device=where), strict=True
            ):
                decoded[i] = image
        for i, d in enumerate(datas):
            if decoded[i] is None:
                decoded[i] = decode_image(d, mode=ImageReadMode.RGB)
        views = [
            self._view(image.to(device, non_blocking=non_blocking), item)
            for image, item in zip(decoded, self.items, strict=True)
        ]
        batch = torch.stack(views).float().div_(255)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        return batch.sub_(mean).div_(std).to(dtype=dtype, memory_format=memory_format)

    def _view(self, image: torch.Tensor, item) -> torch.Tensor:
        _, box, flip, shift = item
        left, top, right, bottom = (round(v) for v in box)
        crop = image[:, top : max(bottom, top + 1), left : max(right, left + 1)].float()
        out = F.interpolate(
            crop[None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )[0]
        out = out.round_().clamp_(0, 255)
        if shift is not None:  # pad_crop: zero-pad 1/8 of the side, cut the original size at the drawn offset
            pad = max(1, self.size // 8)
            out = F.pad(out, (pad, pad, pad, pad))[
                :, shift[1] : shift[1] + self.size, shift[0] : shift[0] + self.size
            ]
        return out.flip(-1) if flip else out


class RawCollate:
    """The collate function of a `decode: gpu` loader: (RawBatch, labels, dropped), as `collate` for arrays."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, items: list):
        kept = [item for item in items if item is not None]
        labels = torch.tensor([label for _, label in kept], dtype=torch.int64)
        return RawBatch([raw for raw, _ in kept], self.size), labels, len(items) - len(kept)


def read_raw(path: str, size: int, *, rng, augment: str, min_crop_scale: float):
    """`raw_item` of the file at `path`."""
    with open(path, "rb") as f:
        data = f.read()
    return raw_item(data, size, rng=rng, augment=augment, min_crop_scale=min_crop_scale)
