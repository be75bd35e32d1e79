"""The GPU knobs (`channels_last`, `cudnn_benchmark`, `compile`, `decode`): accepted everywhere, applied where they mean
something, recorded in the row, and refused with the reason where they cannot work."""

from __future__ import annotations

import pytest
import torch

from launchers.grid import load_grid
from suite.data.config import DataConfig
from suite.data.device_decode import RawBatch
from suite.data.loaders import build_loaders
from suite.data.preflight import prepare_data
from suite.errors import UserError
from suite.spec import RunSpec
from tests.data_trees import make_tree, textured
from tests.test_train import only_row, run_one, write_config


@pytest.mark.slow
def test_a_cpu_run_with_every_knob_is_ok_and_records_what_took_effect(tmp_path):
    knobs = {
        "channels_last": True,
        "cudnn_benchmark": True,
        "compile": True,
        "epochs": 1,
        "steps_per_epoch": 3,
    }
    proc = run_one(tmp_path, write_config(tmp_path, **knobs), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = only_row(tmp_path)
    assert row["status"] == "ok" and row["images_per_s"] > 0
    # NHWC and torch.compile work on a CPU; cuDNN autotuning has nothing to tune there.
    assert (row["channels_last"], row["compile"], row["cudnn_benchmark"]) == (True, True, False)


def test_compile_is_refused_for_the_eps_gate_with_the_reason():
    with pytest.raises(UserError, match="compile: true with variant 'eps': the ε gate all-reduces"):
        RunSpec(variant="eps", epsilon=0.5, compile=True)
    assert RunSpec(variant="scratch", epsilon=0.5, compile=True).compile  # a child has no gate


# ---------------------------------------------------------------------------------------------------------
# decode: gpu. The device path is device-agnostic: on this CPU machine its batches are decoded with the CPU
# as the device, which checks everything but nvJPEG itself; a run asking for it without a GPU is refused.


def jpeg_tree(root, per_class=3):
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                textured(root / split / c / f"{i}.jpg", size=(80 + 8 * i, 60))
    return root


def batches_of(root, decode: str, split: str = "test", **kw):
    cfg = DataConfig(backend="imagefolder", data_dir=str(root), image_size=32, workers=0, decode=decode, **kw)
    loaders = build_loaders(cfg, prepare_data(cfg), micro_batch=4, rank=0, world_size=1)
    return list(getattr(loaders, split))


def test_device_decode_gives_the_cpu_paths_views(tmp_path):
    root = jpeg_tree(tmp_path / "jpegs")
    (raw, labels), *_ = batches_of(root, "gpu")
    (pil, pil_labels), *_ = batches_of(root, "cpu")
    assert isinstance(raw, RawBatch) and labels.tolist() == pil_labels.tolist()
    images = raw.to("cpu", torch.float32)
    assert images.shape == pil.shape == (4, 3, 32, 32)
    # The same centre crop of the same pixels, decoded at full size and resampled by the device instead of
    # PIL's reduced decode: on these grain-textured images 0.06 apart on average (about 3.5 grey levels).
    diff = (images - pil).abs()
    assert diff.mean() < 0.1 and diff.max() < 1.5, (diff.mean(), diff.max())
    assert (images.flip(-1) - pil).abs().mean() > 3 * diff.mean()  # another view differs far more


def test_device_decode_augments_as_a_function_of_seed_epoch_and_index(tmp_path):
    root = jpeg_tree(tmp_path / "jpegs")
    first = [raw.to("cpu") for raw, _ in batches_of(root, "gpu", split="train")]
    again = [raw.to("cpu") for raw, _ in batches_of(root, "gpu", split="train")]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    png = tmp_path / "png"
    make_tree(png, {"train": {"a": 4, "b": 4}, "val": {"a": 2, "b": 2}})
    (raw, _), *_ = batches_of(png, "gpu", augment="pad_crop")  # not JPEG: decoded on the host
    assert raw.to("cpu").shape == (4, 3, 32, 32)


def test_decode_gpu_without_a_gpu_is_refused_in_one_line_and_writes_nothing(tmp_path):
    root = jpeg_tree(tmp_path / "jpegs")
    config = write_config(tmp_path, dataset="imagefolder", data_dir=str(root), decode="gpu", micro_batch=2)
    proc = run_one(tmp_path, config)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "resnet-bench run-one: error: decode: gpu decodes JPEGs on the GPU (torchvision.io.decode_jpeg), and"
        " this run's device is cpu: there is no GPU here; accepted: decode: cpu"
    ]
    assert not (tmp_path / "results").exists()
    with pytest.raises(UserError, match="dataset 'synthetic' has none"):
        RunSpec(dataset="synthetic", decode="gpu")
    grid = tmp_path / "g.yaml"
    grid.write_text("cluster: {use_gpu: false}\ndefaults: {decode: gpu}\n")
    with pytest.raises(UserError, match="decode: gpu needs GPUs, and the cluster has use_gpu: false"):
        load_grid(grid)


def test_channels_last_is_refused_under_zero_with_the_reason():
    with pytest.raises(UserError, match="channels_last: true with zero_stage 2: ZeRO keeps the parameters"):
        RunSpec(channels_last=True, zero_stage=2)
