"""Tar shards: `resnet-bench data shard` writes them, `dataset: shards` trains on them, split across ranks and
loader workers without overlap, and every select and test image counted once (suite/data/shards.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from suite.data.config import DataConfig
from suite.data.loaders import build_loaders
from suite.data.preflight import prepare_data
from suite.data.shard_writer import write_shards
from suite.errors import UserError
from suite.results import read_runs
from suite.spec import RunSpec
from tests.data_trees import drain, make_tree
from tests.test_train import run_one, write_config

REPO = Path(__file__).resolve().parent.parent
COUNTS = {"train": {"a": 14, "b": 13, "c": 13}, "val": {"a": 5, "b": 4, "c": 4}}  # 40 train, 13 val


@pytest.fixture
def packed(tmp_path) -> tuple[Path, Path]:
    src, dest = tmp_path / "folder", tmp_path / "shards"
    make_tree(src, COUNTS)
    write_shards(str(src), str(dest), shard_size=4)
    return src, dest


def shard_cfg(dest: Path, **kw) -> DataConfig:
    return DataConfig(
        **{"backend": "shards", "data_dir": str(dest), "image_size": 8, "workers": 0, "seed": 3, **kw}
    )


def values(split: str, src: Path) -> list[int]:
    """The red values (which image) of a folder split, as tests/data_trees.py drew them."""
    folder = DataConfig(backend="imagefolder", data_dir=str(src), image_size=8, workers=0)
    info = prepare_data(folder)
    loaders = build_loaders(folder, info, micro_batch=64, rank=0, world_size=1)
    return sorted(drain(loaders.test if split == "val" else loaders.train)[0])


def test_data_shard_writes_webdataset_tars_and_an_index(packed):
    src, dest = packed
    index = json.loads((dest / "index.json").read_text())
    assert index["classes"] == ["a", "b", "c"] and index["select_fraction"] == 0.1
    counts = {split: sum(s["samples"] for s in shards) for split, shards in index["splits"].items()}
    assert counts == {"train": 37, "select": 3, "val": 13}  # round(0.1 × 13-14) = 1 per class held out
    assert [s["name"] for s in index["splits"]["val"]] == [f"val-{i:06d}.tar" for i in range(4)]
    with tarfile.open(dest / "train-000000.tar") as tar:
        names = tar.getnames()
    assert names == [f"{k:09d}.{ext}" for k in range(4) for ext in ("png", "cls")]
    # The training samples were mixed across classes before cutting: the first shard is not one class.
    with tarfile.open(dest / "train-000000.tar") as tar:
        labels = {tar.extractfile(n).read() for n in names if n.endswith(".cls")}
    assert len(labels) > 1
    again = dest.parent / "again"
    write_shards(str(src), str(again), shard_size=4)
    digest = lambda d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.glob("*.tar")}  # noqa: E731
    assert digest(again) == digest(dest)  # same folder, same bytes


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_split_the_shards_without_overlap(packed, workers):
    src, dest = packed
    cfg = shard_cfg(dest, workers=workers)
    info = prepare_data(cfg)
    assert (info.train_size, info.val_size, info.num_classes) == (40, 13, 3)
    ranks = [build_loaders(cfg, info, micro_batch=2, rank=r, world_size=2) for r in range(2)]
    # Test and select: every image exactly once over the ranks, the short last batches included.
    test = sorted(v for loaders in ranks for v in drain(loaders.test)[0])
    assert test == values("val", src)
    select = [v for loaders in ranks for v in drain(loaders.select)[0]]
    assert len(select) == len(set(select)) == 3
    # Train: the same number of steps on every rank, disjoint images, none of them a select image.
    seen = {}
    for epoch in (0, 1):
        per_rank = []
        for loaders in ranks:
            loaders.set_epoch(epoch)
            batches = list(loaders.train)
            assert len(batches) == len(loaders.train)
            per_rank.append(drain(batches)[0])
        assert len(per_rank[0]) == len(per_rank[1]) and not set(per_rank[0]) & set(per_rank[1])
        assert not set(per_rank[0] + per_rank[1]) & set(select)
        seen[epoch] = per_rank[0]
    assert seen[0] != seen[1]  # reshuffled every epoch


def test_bad_shard_input_is_a_one_line_error(packed, tmp_path):
    src, dest = packed
    with pytest.raises(UserError, match="is not empty; accepted: a missing or empty directory"):
        write_shards(str(src), str(dest))
    with pytest.raises(UserError, match=r"select_fraction 0.2 but the shards in .* hold out 0.1"):
        prepare_data(shard_cfg(dest, select_fraction=0.2))
    with pytest.raises(UserError, match=r"holds no index\.json"):
        prepare_data(shard_cfg(tmp_path))
    (dest / "val-000002.tar").unlink()
    with pytest.raises(UserError, match=r"val-000002\.tar listed in .* is missing"):
        prepare_data(shard_cfg(dest))
    cfg = shard_cfg(dest.parent / "more", workers=0)
    write_shards(str(src), cfg.data_dir, shard_size=20)  # 2 training shards: too few for 2 ranks × 2 workers
    info = prepare_data(cfg)
    with pytest.raises(UserError, match="2 shards for 2 ranks × 2 loader workers"):
        build_loaders(DataConfig(**{**cfg.__dict__, "workers": 2}), info, micro_batch=2, rank=0, world_size=2)


def test_a_two_rank_run_on_shards_is_ok_and_counts_every_test_image_once(packed, tmp_path):
    src, _ = packed
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_bench", "data", "shard", str(src), str(tmp_path / "cli"), "--shard-size", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "train 37 in 8, select 3 in 1, val 13 in 3 shards" in proc.stdout
    spec = {"dataset": "shards", "data_dir": str(tmp_path / "cli"), "micro_batch": 2, "epochs": 1}
    result = run_one(tmp_path, write_config(tmp_path, **spec), ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = read_runs(tmp_path / "results", "t").to_pylist()
    assert row["status"] == "ok" and row["dataset"] == "shards"
    assert (row["test_images"], row["select_images"]) == (13, 3)


def test_shards_ship_raw_bytes_for_device_decode(packed):
    _, dest = packed
    gpu, cpu = (shard_cfg(dest, decode=decode) for decode in ("gpu", "cpu"))
    batches = list(build_loaders(gpu, prepare_data(gpu), micro_batch=4, rank=0, world_size=1).test)
    assert sum(len(labels) for _, labels in batches) == 13
    raw, labels = batches[0]
    images = raw.to("cpu")  # the device path, with the CPU as the device (tests/test_gpu_knobs.py)
    pil = next(iter(build_loaders(cpu, prepare_data(cpu), micro_batch=4, rank=0, world_size=1).test))
    assert images.shape == (4, 3, 8, 8) and drain([(images, labels)]) == drain(
        [pil]
    )  # the same solid colours


def test_stage_dir_copies_the_shards_once_and_the_loaders_read_the_copies(packed, tmp_path):
    src, dest = packed
    local = tmp_path / "node-local"
    cfg = shard_cfg(dest, stage_dir=str(local))
    info = prepare_data(cfg)
    loaders = build_loaders(cfg, info, micro_batch=4, rank=0, world_size=1)
    names = sorted(p.name for p in dest.glob("*.tar"))
    assert sorted(p.name for p in local.glob("*.tar")) == names
    stamps = {p.name: p.stat().st_mtime_ns for p in local.glob("*.tar")}
    build_loaders(cfg, info, micro_batch=4, rank=1, world_size=2)  # another rank of the node: no second copy
    assert {p.name: p.stat().st_mtime_ns for p in local.glob("*.tar")} == stamps
    for shard in dest.glob("*.tar"):
        shard.unlink()  # the shared copy is gone: only the staged one can serve the batches
    assert sorted(drain(loaders.test)[0]) == values("val", src)
    with pytest.raises(UserError, match="stage_dir applies to dataset 'shards' only"):
        RunSpec(dataset="shapes", stage_dir=str(local))
