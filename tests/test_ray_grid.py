"""Grids on a real local Ray (and a simulated two-node cluster): rows, failures, restarts, resubmission."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from suite.results import read_curves, read_runs

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

TINY = """
name: {name}
cluster: {{nodes: {nodes}, devices_per_node: {dpn}, cpus_per_worker: 0.5{cluster}}}
concurrency: {concurrency}
max_failures: 1
defaults:
  width: 4
  small_stem: true
  image_size: 16
  dataset: synthetic
  micro_batch: 8
  epochs: 2
  steps_per_epoch: 4
  warmup_steps: 1
  loader_workers: 0
"""


def grid_file(tmp_path: Path, body: str, *, name="g", nodes=1, dpn=2, concurrency=2, cluster="") -> Path:
    path = tmp_path / f"{name}.yaml"
    shape = TINY.format(name=name, nodes=nodes, dpn=dpn, concurrency=concurrency, cluster=cluster)
    path.write_text(shape + textwrap.dedent(body))
    return path


def resnet_bench(*args, env=None, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "resnet_bench", *args], cwd=REPO, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout, **kwargs,
    )  # fmt: skip


def rows(results: Path, grid: str = "g") -> list[dict]:
    return read_runs(results, grid).to_pylist()


def test_four_point_grid_with_a_failing_point(tmp_path):
    # The resnet101 point asks for more than the 1024-image synthetic epoch holds per step: it fails at
    # run time (not at validation) and must become a `failed` row while the others finish. Its local Ray
    # runs without a dashboard (cluster.dashboard: false); tests/test_campaign.py runs one with it.
    grid = grid_file(
        tmp_path,
        """
        axes:
          arch: [resnet50]
          variant: [resnet, eps]
          epsilon: [0.5]
        points:
          - {arch: resnet101}
          - {arch: resnet101, micro_batch: 1024}
        """,
        cluster=", dashboard: false",
    )
    results = tmp_path / "results"
    proc = resnet_bench("run", str(grid), "--results", str(results))
    assert proc.returncode == 1, proc.stderr[-3000:]  # one point failed
    got = {(r["arch"], r["variant"], r["micro_batch"]): r for r in rows(results)}
    assert len(got) == 4
    failed = got[("resnet101", "resnet", 1024)]
    assert failed["status"] == "failed" and "no full micro-batch" in failed["error"]
    ok = [r for k, r in got.items() if k != ("resnet101", "resnet", 1024)]
    assert all(r["status"] == "ok" and r["launcher"] == "ray" and r["world_size"] == 2 for r in ok)
    assert all(r["ray_version"] for r in ok)
    curves = read_curves(results, "g").to_pylist()
    assert len(curves) == 3 * 2  # 2 epochs for each finished point
    assert "1 failed" in proc.stdout
    console = proc.stdout + proc.stderr  # the bar and its session line are on stderr
    assert "no Ray dashboard · worker logs" in console and "dashboard http" not in console, console[-3000:]
    leftovers = [p for p in (results / "g").rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert leftovers == []


def test_the_questions_arms_run_on_ray_and_their_curves_say_where_identities_form(tmp_path):
    grid = grid_file(
        tmp_path,
        """
        axes:
          variant: [resnet, plain]
        points:
          - {variant: stochdepth, depth_schedule: constant}
          - {variant: stochdepth, depth_schedule: restore}
          - {variant: resnet, block: preact}
          - {variant: eps, block: preact, epsilon: 0.5, gate_sync: local}
        """,
    )
    results = tmp_path / "results"
    proc = resnet_bench("run", str(grid), "--results", str(results))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {(r["variant"], r["block"], r["gate_sync"]): r for r in rows(results)}
    assert all(r["status"] == "ok" and r["world_size"] == 2 for r in got.values()), got
    assert set(got) == {("resnet", "v1.5", None), ("plain", "v1.5", None), ("stochdepth", "v1.5", None),
                        ("resnet", "preact", None), ("eps", "preact", "local")} and len(rows(results)) == 6  # fmt: skip
    curves = read_curves(results, "g").to_pylist()
    assert len(curves) == 6 * 2
    variant_of = {r["run_id"]: r["variant"] for r in rows(results)}
    for c in curves:
        assert len(c["block_branch_max_abs"]) == len(c["block_branch_rel_norm"]) == 16
        stochastic = variant_of[c["run_id"]] == "stochdepth"
        assert (c["active_depth_measured"] is not None) == stochastic
        assert (c["active_depth_expected"] is not None) == stochastic
    report = (results / "g" / "report.md").read_text()
    degradation = report.split("## 9. Degradation")[1]  # the plain network against its residual twin
    assert re.search(
        r"\| ResNet-50 \| v1\.5 \| g \| \d\.\d{3} \(1 run\) \| \d\.\d{3} \(1 run\) \|", degradation
    )
    assert "ε-ResNet-50 pre-act" in report


SHORT_DEFAULT = """
import sys
from pathlib import Path

import yaml

import launchers.driver
from resnet_bench import main

# The embedded default, shortened to fit CI: every point, 2 epochs (the ε gate is on in the second) of 3 steps.
grid = yaml.safe_load(launchers.driver.default_grid_path().read_text())
grid["defaults"].update(epochs=2, steps_per_epoch=3, warmup_steps=1)
short = Path(sys.argv[1]) / "default.yaml"
short.write_text(yaml.safe_dump(grid))
launchers.driver.default_grid_path = lambda: short
sys.exit(main(["run", "--results", sys.argv[2]]))
"""


def test_resnet_bench_run_with_no_grid_runs_the_embedded_default(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-c", SHORT_DEFAULT, str(tmp_path), str(results)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = rows(results, "default")
    assert sorted((r["arch"], r["variant"]) for r in got) == [
        (a, v) for a in ("resnet101", "resnet152", "resnet50") for v in ("eps", "resnet")
    ]
    assert all(r["status"] == "ok" and r["world_size"] == 2 and r["dataset"] == "shapes" for r in got)
    assert "grid default: 6 points, 0 already finished" in proc.stdout, proc.stdout[-3000:]
    report = results / "default" / "report.html"
    assert f"report: {report}" in proc.stdout.replace("\n", "") and report.is_file()


def test_worker_killed_mid_run_restarts_from_checkpoint(tmp_path):
    grid = grid_file(tmp_path, "points:\n  - {arch: resnet50, epochs: 3}\n", concurrency=1)
    flag = tmp_path / "killed"
    results = tmp_path / "results"
    # Step 5 is in the second epoch (4 steps each): epoch 0's checkpoint has been reported by then. The kill
    # waits 5 s because Ray Train's controller collects reports on its 2 s health-check poll: a crash right
    # after a report can lose it (then the run restarts from the checkpoint before, here from scratch).
    proc = resnet_bench(
        "run", str(grid), "--results", str(results),
        env={"RESNET_BENCH_FAULTS": f"kill_at_step=5:rank=1:once={flag}:wait=5"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert flag.exists()
    (row,) = rows(results)
    assert (row["status"], row["restarts"], row["epochs"]) == ("ok", 1, 3)
    assert [c["epoch"] for c in read_curves(results, "g").to_pylist()] == [0, 1, 2]


def test_driver_killed_and_rerun_finishes_without_duplicates(tmp_path):
    grid = grid_file(
        tmp_path, "axes:\n  arch: [resnet50, resnet101, resnet152]\n  variant: [resnet]\n", concurrency=1
    )
    results = tmp_path / "results"
    runs = results / "g" / "runs"
    # Own session: SIGKILL to the process group takes the driver and the Ray it started, like a lost node.
    driver = subprocess.Popen(
        [sys.executable, "-m", "resnet_bench", "run", str(grid), "--results", str(results)],
        cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(runs.glob("*.parquet")):
            time.sleep(0.5)
        assert list(runs.glob("*.parquet")), "no point finished in time"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    first = {r["run_id"]: r["ended_at"] for r in rows(results)}
    assert 1 <= len(first) < 3
    proc = resnet_bench("run", str(grid), "--results", str(results))
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = rows(results)
    assert len(final) == 3 and len({r["run_id"] for r in final}) == 3
    for r in final:
        if r["run_id"] in first:
            assert r["ended_at"] == first[r["run_id"]] and r["attempts"] == 0  # not re-run
    # Tables and reports, plus what a user keeps on purpose: the TensorBoard files and the worker logs.
    kept = ("tensorboard", "logs")
    visible = sorted(p.name for p in (results / "g").rglob("*") if p.is_file())
    tables = [
        p.name for p in (results / "g").rglob("*")
        if p.is_file() and p.relative_to(results / "g").parts[0] not in kept
    ]  # fmt: skip
    assert all(name.endswith(".parquet") or name.startswith("report.") for name in tables), tables
    assert {p.name for p in (results / "g" / "tensorboard").iterdir()} == {r["run_id"] for r in final}
    assert not [n for n in visible if n.startswith(".") or n.endswith(".tmp")]
    assert not (results / "g" / ".tune").exists() and not (results / "g" / ".checkpoints").exists()


def test_bad_grid_exits_2_and_writes_nothing(tmp_path):
    grid = grid_file(tmp_path, "axes: {arch: [resnet18]}\n")
    proc = resnet_bench("run", str(grid), "--results", str(tmp_path / "results"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "resnet18" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_dry_run_prints_the_plan(tmp_path):
    grid = grid_file(
        tmp_path, "axes: {arch: [resnet50, resnet152], variant: [resnet, eps], epsilon: [0.5]}\n"
    )
    proc = resnet_bench("run", str(grid), "--dry-run", "--results", str(tmp_path / "results"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "4 points" in proc.stdout and "device-hours" in proc.stdout
    assert not (tmp_path / "results").exists()


# --- a simulated two-node cluster ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_nodes():
    """Head + one worker node (1 CPU each) on 127.0.0.1, with a known metrics port; shut down by the test."""
    from ray.cluster_utils import Cluster

    from suite.distributed import free_port

    metrics_ports = (free_port(), free_port())  # one per node: rank 0 may land on either
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
            "metrics_export_port": metrics_ports[0], "node_ip_address": "127.0.0.1",
            # Export every second instead of every 10 s, so a short run's gauge shows up while it runs.
            "_system_config": {"metrics_report_interval_ms": 1000},
        },
    )  # fmt: skip
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", metrics_export_port=metrics_ports[1])
    cluster.wait_for_nodes()
    try:
        yield cluster, metrics_ports
    finally:
        cluster.shutdown()


def test_two_node_point_spreads_workers_and_exports_live_metrics(tmp_path, two_nodes):
    cluster, metrics_ports = two_nodes
    grid = grid_file(
        tmp_path, "points:\n  - {arch: resnet50, nodes: 2, epochs: 3, steps_per_epoch: 40}\n", nodes=2, dpn=1
    )
    results = tmp_path / "results"
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(
        [sys.executable, "-m", "resnet_bench", "run", str(grid), "--results", str(results)],
        cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    seen = None
    try:
        deadline = time.monotonic() + 300
        while driver.poll() is None and time.monotonic() < deadline and seen is None:
            for port in metrics_ports:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                        text = r.read().decode()
                except OSError:
                    continue
                prefix = "ray_resnet_bench_images_per_s{"
                seen = seen or next((ln for ln in text.splitlines() if ln.startswith(prefix)), None)
            time.sleep(0.5)
        driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, log.read_text()[-3000:]
    (row,) = rows(results)
    assert row["status"] == "ok" and row["world_size"] == 2 and row["nodes"] == 2
    assert f"shared storage: 2 nodes see {(results / 'g').resolve()}" in log.read_text()
    assert seen is not None, "the images/s gauge never appeared on the metrics endpoint"
    assert f'run_id="{row["run_id"]}"' in seen and 'grid="g"' in seen
    # The two Train workers ran on different Ray nodes.
    import ray
    from ray.util.state import list_actors

    ray.init(address=cluster.address)
    try:
        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=100)
        assert len({w.node_id for w in workers}) == 2
    finally:
        ray.shutdown()


def _can_unshare_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _can_unshare_mounts(), reason="needs `unshare -m` (root or user namespaces)")
def test_a_node_that_does_not_see_the_results_stops_the_grid_naming_it(tmp_path):
    """A second Ray node in its own mount namespace, with an empty tmpfs where the results are: a node whose
    `results/` is its local disk. The multi-node point must not start, and the error names the node."""
    import ray
    from ray.cluster_utils import Cluster

    shared = tmp_path / "shared"
    shared.mkdir()
    results = shared / "results"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    node_log = tmp_path / "node.log"
    mount_then_start = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
    node = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", mount_then_start, str(shared),
         sys.executable, "-m", "launchers.ray_loopback", "start", f"--address={cluster.address}",
         "--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=100000000", "--block",
         "--disable-usage-stats"],
        cwd=REPO, stdout=node_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        ray.init(address=cluster.address)
        try:
            deadline = time.monotonic() + 120
            while sum(n["Alive"] for n in ray.nodes()) < 2:
                assert node.poll() is None and time.monotonic() < deadline, node_log.read_text()[-2000:]
                time.sleep(0.5)
        finally:
            ray.shutdown()
        grid = grid_file(tmp_path, "points:\n  - {arch: resnet50, nodes: 2}\n", nodes=2, dpn=1)
        proc = resnet_bench("run", str(grid), "--results", str(results), env={"RAY_ADDRESS": cluster.address})
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)
        cluster.shutdown()
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error) == 1, proc.stderr[-3000:]
    assert re.search(
        rf"node \S+ \(127\.0\.0\.1\) does not share the results directory {re.escape(str(results / 'g'))}: it"
        r" cannot read the driver's marker",
        error[0],
    ), error[0]
    assert not (results / "g").exists()  # nothing written: no row, no checkpoint, no leftover marker
