"""The dataset is listed and sample-decoded once per dataset (its manifest), not once per rank or run.

Counted from outside the suite: tests/probes/sitecustomize.py records, through Python's audit hooks, every
directory listing and image open under the data root in every process the run starts (the driver, torchrun's
ranks, Ray's workers and their DataLoader workers).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from suite.distributed import free_port
from suite.results import read_runs
from tests.data_trees import make_tree

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "tests" / "probes"
pytestmark = pytest.mark.slow

SPEC = {
    "arch": "resnet50",
    "width": 4,
    "small_stem": True,
    "image_size": 16,
    "dataset": "imagefolder",
    "micro_batch": 4,
    "epochs": 1,
    "steps_per_epoch": 2,
    "warmup_steps": 1,
    "loader_workers": 0,
}


def probed_env(root: Path, log: Path) -> dict[str, str]:
    path = os.pathsep.join([str(PROBE), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "RB_PROBE_ROOT": str(root), "RB_PROBE_LOG": str(log)}


def events(log: Path) -> list[tuple[int, str, str]]:
    """(pid, kind, path) of every probed event."""
    out = []
    for line in log.read_text().splitlines():
        pid, _, kind, path = line.split(" ", 3)
        out.append((int(pid), kind, path))
    return out


def listings(log: Path, root: Path) -> Counter:
    """How often each process listed the training split (one full listing of the tree lists it once)."""
    return Counter(pid for pid, kind, path in events(log) if kind == "list" and path == str(root / "train"))


def checkers(log: Path) -> set[int]:
    """The processes that ran the preflight's sample decode."""
    return {pid for pid, kind, _ in events(log) if kind == "check"}


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "data"
    make_tree(root, {"train": {"a": 12, "b": 12}, "val": {"a": 4, "b": 4}})
    return root


def test_a_two_rank_torchrun_run_lists_and_checks_the_data_once(tmp_path, tree):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**SPEC, "data_dir": str(tree), "grid": "t"}))
    log = tmp_path / "probe.log"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", "-m", "resnet_bench", "run-one", str(config),
         "--results", str(tmp_path / "results")],
        cwd=REPO, env=probed_env(tree, log), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_runs(tmp_path / "results", "t").column("status").to_pylist() == ["ok"]
    assert sum(listings(log, tree).values()) == 1, listings(log, tree)
    assert len(checkers(log)) == 1
    # The ranks did read the images: the probe sees their loads (it is not blind to the ranks).
    assert len({pid for pid, kind, _ in events(log) if kind == "load"}) == 2


def test_a_run_on_an_indexed_tree_lists_none_of_its_directories(tmp_path, tree):
    index_log, run_log = tmp_path / "index.log", tmp_path / "run.log"
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_bench", "data", "index", str(tree)],
        cwd=REPO, env=probed_env(tree, index_log), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(listings(index_log, tree).values()) == 1 and len(checkers(index_log)) == 1
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**SPEC, "data_dir": str(tree), "grid": "t"}))
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_bench", "run-one", str(config), "--results", str(tmp_path / "results")],
        cwd=REPO, env=probed_env(tree, run_log), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_runs(tmp_path / "results", "t").column("status").to_pylist() == ["ok"]
    assert [path for _, kind, path in events(run_log) if kind == "list"] == []
    assert checkers(run_log) == set()  # the sample decode's findings came from the manifest too
    assert any(kind == "load" for _, kind, _ in events(run_log))  # the probe did watch the run


def test_a_two_rank_ray_point_uses_the_drivers_check_of_the_data(tmp_path, tree):
    grid = tmp_path / "g.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "name": "g",
                "cluster": {"nodes": 1, "devices_per_node": 2, "cpus_per_worker": 0.5},
                "defaults": {**SPEC, "data_dir": str(tree)},
                "points": [{"arch": "resnet50"}],
            }
        )
    )
    log = tmp_path / "probe.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnet_bench", "run", str(grid), "--results", str(tmp_path / "results")],
        cwd=REPO, env=probed_env(tree, log), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, (out + err)[-3000:]
    assert read_runs(tmp_path / "results", "g").column("status").to_pylist() == ["ok"]
    # The driver is the only process that listed or decoded a sample: the workers got its DatasetInfo.
    assert dict(listings(log, tree)) == {proc.pid: 1}
    assert checkers(log) == {proc.pid}
    assert len({pid for pid, kind, _ in events(log) if kind == "load"} - {proc.pid}) >= 2
