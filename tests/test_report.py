"""The comparison report: numbers checked against DuckDB, Markdown against a reviewed snapshot, HTML in Chromium.

The fixture is a hand-made but realistic ImageNet grid (A100s, bf16, 90 epochs, step schedule): parameter and
FLOP counts are the exact counts of the pruned networks (computed once with `suite.models` for the removed
blocks listed here), throughput and accuracy are plausible, and each run's time-to-target is read off its own
curve. Refresh the snapshot after a reviewed change with `UPDATE_SNAPSHOTS=1 pytest tests/test_report.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resnet_bench import main
from suite.errors import UserError
from suite.report import build_report
from suite.results import write_run
from suite.schema import RUN_SCHEMA, SCHEMA_VERSION

SNAPSHOT = Path(__file__).parent / "snapshots" / "report.md"
GRID = "imagenet"
TRAIN_IMAGES = 1_281_167
PEAK = 312e12  # A100 bf16 dense, datasheet
T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)

# arch: (blocks, params of the plain ResNet, params of the ε-ResNet incl. side head, forward FLOPs unpruned)
ARCHS = {
    "resnet50": (16, 25_557_032, 26_584_080, 8_178_368_512),
    "resnet101": (33, 44_549_160, 45_576_208, 15_602_810_880),
    "resnet152": (50, 60_192_808, 61_219_856, 23_027_253_248),
}
# Pruned networks: (params, forward FLOPs, blocks removed per stage), exact for the removed blocks noted.
PRUNED = {
    "r50 s3:3,5": (23_322_664, 7_304_904_704, [0, 0, 2, 0]),
    "r50 s2:2 s3:3,5": (23_042_600, 6_868_172_800, [0, 1, 2, 0]),
    "r50 s2:3 s3:2,4,5": (21_925_416, 6_431_440_896, [0, 1, 3, 0]),
    "r50 s3:3,4,5": (22_205_480, 6_868_172_800, [0, 0, 3, 0]),
    "r101 s3:5,9,13,17,21": (38_963_240, 13_419_151_360, [0, 0, 5, 0]),
    "r101 s3:4,8,12,16,20,22": (37_846_056, 12_982_419_456, [0, 0, 6, 0]),
    "r101 s3:10-15": (37_846_056, 12_982_419_456, [0, 0, 6, 0]),
    "r152 s3:every third from 2": (46_786_600, 17_786_470_400, [0, 0, 12, 0]),
}

# One entry per run: (arch, variant, ε, purge k, devices, micro-batch, launcher, repeat, images/s, top-1,
# top-5, pruned network or None, extra). ws 1/2/4 with a fixed micro-batch: weak scaling (ResNet-50); a fixed
# global batch of 256: strong scaling (ResNet-101).
RUNS = [
    *[
        ("resnet50", "resnet", None, 0, 4, 64, "ray", r, ips, t1, t5, None, {})
        for r, ips, t1, t5 in zip(
            range(5),
            (9352.4, 9404.1, 9316.8, 9440.2, 9377.5),
            (0.7612, 0.7598, 0.7631, 0.7587, 0.7620),
            (0.9291, 0.9285, 0.9302, 0.9279, 0.9296),
            strict=True,
        )
    ],
    ("resnet50", "resnet", None, 0, 4, 64, "torchrun", 0, 9521.3, 0.7609, 0.9290, None, {}),
    ("resnet50", "resnet", None, 0, 4, 64, "torchrun", 1, 9498.7, 0.7624, 0.9298, None, {}),
    ("resnet50", "resnet", None, 0, 1, 64, "ray", 0, 2391.6, 0.7571, 0.9268, None, {}),
    ("resnet50", "resnet", None, 0, 2, 64, "ray", 0, 4731.9, 0.7593, 0.9281, None, {}),
    ("resnet50", "eps", 0.2, 0, 4, 64, "ray", 0, 9012.3, 0.7589, 0.9277, "r50 s3:3,5", {}),
    ("resnet50", "eps", 0.2, 0, 4, 64, "ray", 1, 9040.8, 0.7603, 0.9284, "r50 s3:3,5", {}),
    ("resnet50", "eps", 0.2, 0, 4, 64, "ray", 2, 8987.1, 0.7571, 0.9269, "r50 s2:2 s3:3,5", {}),
    ("resnet50", "eps", 0.4, 0, 4, 64, "ray", 0, 9051.6, 0.7532, 0.9241, "r50 s2:3 s3:2,4,5", {}),
    ("resnet50", "eps", 0.4, 0, 4, 64, "ray", 1, 9023.2, 0.7496, 0.9226, "r50 s3:3,4,5", {}),
    ("resnet50", "posthoc", None, 3, 4, 64, "ray", 0, 9398.2, 0.7548, 0.9262, "r50 s3:3,4,5", {}),
    ("resnet50", "posthoc", None, 3, 4, 64, "ray", 1, 9362.9, 0.7561, 0.9270, "r50 s3:3,4,5", {}),
    ("resnet101", "resnet", None, 0, 4, 64, "ray", 0, 5468.1, 0.7741, 0.9362, None, {}),
    (
        "resnet101",
        "resnet",
        None,
        0,
        4,
        64,
        "ray",
        1,
        5502.4,
        0.7729,
        0.9355,
        None,
        {"world_size_changed": True, "restarts": 1},
    ),
    ("resnet101", "resnet", None, 0, 1, 256, "ray", 0, 1441.7, 0.7735, 0.9359, None, {}),
    ("resnet101", "resnet", None, 0, 2, 128, "ray", 0, 2838.5, 0.7738, 0.9361, None, {}),
    ("resnet101", "eps", 0.3, 0, 4, 64, "ray", 0, 5280.6, 0.7702, 0.9338, "r101 s3:5,9,13,17,21", {}),
    (
        "resnet101",
        "eps",
        0.3,
        0,
        4,
        64,
        "ray",
        1,
        5237.9,
        0.7688,
        0.9331,
        "r101 s3:4,8,12,16,20,22",
        {"restarts": 1},
    ),
    ("resnet101", "eps", 0.6, 0, 4, 64, "ray", 0, 5262.0, None, None, None, {"status": "diverged"}),
    ("resnet101", "posthoc", None, 6, 4, 64, "ray", 0, 5489.3, 0.7652, 0.9306, "r101 s3:10-15", {}),
    ("resnet152", "resnet", None, 0, 4, 64, "ray", 0, 3822.4, 0.7831, 0.9405, None, {}),
    ("resnet152", "eps", 0.3, 0, 4, 64, "ray", 0, 3701.9, 0.7794, 0.9387, "r152 s3:every third from 2", {}),
    ("resnet152", "eps", 0.3, 0, 4, 64, "ray", 1, None, None, None, None, {"status": "failed"}),
]
DIVERGED_ERROR = (
    "training loss is nan at epoch 7 (step 35,028); ε = 0.6\nlast finite loss 5.912 at step 35,000"
)
FAILED_ERROR = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.53 GiB (GPU 2; 79.15 GiB total)\n"
    "Traceback (most recent call last):\n  File suite/train.py, line 212, in _attempt"
)


# The run spec as suite/spec.py's RunSpec.to_dict() wrote it when this fixture was made. Frozen here, not built
# with RunSpec, so that a new spec field changes neither the run ids nor the reviewed snapshot.
BASE_SPEC = {
    "arch": "resnet50",
    "variant": "resnet",
    "epsilon": None,
    "eps_warmup_epochs": 1,
    "lr_reset_on_discard": True,
    "side_loss_weight": 0.1,
    "purge_blocks": 0,
    "finetune_epochs": 0,
    "width": 64,
    "small_stem": False,
    "image_size": 224,
    "dataset": "imagefolder",
    "data_dir": "/datasets/imagenet",
    "num_classes": 1000,
    "loader_workers": 8,
    "min_crop_scale": None,
    "epochs": 90,
    "steps_per_epoch": None,
    "warmup_steps": 50,
    "micro_batch": 64,
    "grad_accum": 1,
    "precision": "bf16",
    "zero_stage": 0,
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 0.0001,
    "label_smoothing": 0.1,
    "schedule": "step",
    "lr_warmup_epochs": 0.0,
    "step_milestones": [30, 60, 80],
    "step_gamma": 0.1,
    "seed": 0,
    "repeat": 0,
    "target_top1": 0.75,
    "grid": GRID,
    "nodes": 1,
    "devices_per_node": 1,
    "launcher": "ray",
}


def accuracy_shape(epoch: int) -> float:
    """Top-1 as a fraction of the final top-1 under a step schedule with drops at epochs 30, 60, 80."""
    if epoch < 30:
        return 0.70 * (1 - math.exp(-(epoch + 1) / 5))
    if epoch < 60:
        return 0.92 - 0.04 * math.exp(-(epoch - 30) / 4)
    if epoch < 80:
        return 0.985 - 0.01 * math.exp(-(epoch - 60) / 3)
    return 1 - 0.003 * (89 - epoch) / 9


def make_run(index: int, entry: tuple) -> tuple[dict, list[dict]]:
    arch, variant, eps, k, ws, micro, launcher, repeat, ips, top1, top5, pruned, extra = entry
    spec = {
        **BASE_SPEC,
        "arch": arch,
        "variant": variant,
        "epsilon": eps,
        "purge_blocks": k,
        "micro_batch": micro,
        "seed": 1000 + repeat,
        "repeat": repeat,
        "devices_per_node": ws,
        "launcher": launcher,
        "grid": GRID,
    }
    spec_json = json.dumps(spec, sort_keys=True)
    # suite/spec.py's recipe: readable prefix, hash of the whole spec.
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    run_id = f"{variant}-{arch}-{digest[:12]}"
    status = extra.get("status", "ok")
    blocks, resnet_params, eps_params, flops = ARCHS[arch]
    started = T0 + timedelta(minutes=37 * index)
    epoch_s = TRAIN_IMAGES / ips if ips else None
    last_epoch = {"ok": 89, "diverged": 7, "failed": -1}[status]
    params_active, flops_active, per_stage = (
        PRUNED[pruned] if pruned else (resnet_params, flops, [0, 0, 0, 0])
    )
    curves, time_to_target = [], None
    for e in range(last_epoch + 1):
        g = accuracy_shape(e)
        ref_top1 = top1 if top1 is not None else 0.70
        elapsed = (e + 1) * (epoch_s + 11.5)
        diverged_now = status == "diverged" and e == last_epoch
        removed_now = 0 if e < 1 else round(sum(per_stage) * min(1.0, e / 30))
        curves.append(
            {
                "epoch": e,
                "loss": math.nan if diverged_now else 1.05 + 3 * (0.77 - ref_top1) + 4.6 * (1 - g) ** 1.3,
                "top1_select": ref_top1 * g,
                "top5_select": min(0.999, (top5 or 0.92) * (0.55 + 0.45 * g)),
                "lr": 0.1 * micro * ws / 256 * 0.1 ** sum(e >= m for m in (30, 60, 80)),
                "blocks_active": blocks - (removed_now if variant == "eps" else 0),
                "epsilon": (0.0 if e < 1 else eps) if variant == "eps" else None,
                "images_per_s": ips * (1 + 0.004 * math.sin(e)),
                "elapsed_s": elapsed,
            }
        )
        if time_to_target is None and top1 is not None and ref_top1 * g >= 0.75:
            time_to_target = elapsed
    train_s = curves[-1]["elapsed_s"] + 95.0 if curves else 1260.0
    global_batch = micro * ws
    ok = status == "ok"
    row = {
        "run_id": run_id,
        "grid": GRID,
        "seed": spec["seed"],
        "repeat": repeat,
        "launcher": launcher,
        "attempts": 0,
        "spec_json": spec_json,
        "arch": arch,
        "variant": variant,
        "epsilon": eps,
        "side_head": variant == "eps",
        "lr_reset_on_discard": variant == "eps",
        "parent_run_id": None,
        "width": 64,
        "image_size_px": 224,
        "num_classes": 1000,
        "dataset": "imagefolder",
        "params_total": resnet_params,
        "params_train": eps_params if variant == "eps" else resnet_params,
        "params_active": params_active if ok else None,
        "blocks_total": blocks,
        "blocks_discarded": sum(per_stage) if ok else None,
        "blocks_discarded_per_stage": per_stage if ok else None,
        "flops_per_image": flops_active if ok else None,
        "flops_per_image_unpruned": flops,
        "nodes": 1,
        "devices_per_node": ws,
        "world_size": ws,
        "world_size_changed": extra.get("world_size_changed", False),
        "device_name": "NVIDIA A100-SXM4-80GB",
        "math_isa": "sm_80; cuDNN 90240",
        "threads_per_rank": 8,
        "deterministic": False,
        "device_peak_flops_per_s": PEAK,
        "device_peak_source": "datasheet",
        "peak_memory_bytes": int(micro * 0.31 * 2**30 * (blocks / 16) ** 0.5),
        "micro_batch": micro,
        "grad_accum": 1,
        "global_batch": global_batch,
        "precision": "bf16",
        "zero_stage": 0,
        "loader_workers": 8,
        "epochs": last_epoch + 1,
        "warmup_steps": 50,
        "timed_steps": (last_epoch + 1) * (TRAIN_IMAGES // global_batch) - 50 if ips else None,
        "step_ms_p50": 1000 * global_batch / ips if ips else None,
        "step_ms_p90": 1060 * global_batch / ips if ips else None,
        "images_per_s": ips,
        "images_per_s_compute": ips / 0.978 if ips else None,
        "data_wait_frac": 0.022 if ips else None,
        "mfu": 3 * flops * ips / (ws * PEAK) if ips else None,
        "train_time_s": train_s,
        "images_skipped": 0,
        "top1": top1,
        "top5": top5,
        "top1_select": curves[-1]["top1_select"] + 0.003 if ok else None,
        # The purge costs accuracy before its fine-tune; select and test top-1 differ by a little.
        "top1_gated": None if top1 is None else top1 + (0.012 if variant == "posthoc" else 0.0),
        "test_images": 50_000 if ok else None,
        "prune_logit_max_abs_diff": (0.0 if variant != "posthoc" else 3.1) if ok else None,
        "blocks_gate_mismatch": 0 if ok and variant == "eps" else None,
        "target_top1": 0.75,
        "time_to_target_s": time_to_target,
        "status": status,
        "error": {"ok": None, "diverged": DIVERGED_ERROR, "failed": FAILED_ERROR}[status],
        "restarts": extra.get("restarts", 0),
        "oom_retries": 2 if status == "failed" else 0,
        "torch_version": "2.14.1",
        "deepspeed_version": "0.19.8",
        "ray_version": "2.60.0" if launcher == "ray" else None,
        "python_version": "3.11.11",
        "git_sha": "3f9c2e1a7b4d5e6f8091a2b3c4d5e6f708192a3b",
        "hosts": [f"gpu-a{index % 4 + 1:02d}"] * ws,
        "slurm_job_id": "731204" if launcher == "ray" else f"7313{88 + repeat}",
        "started_at": started,
        "ended_at": started + timedelta(seconds=train_s),
    }
    return row, curves


def write_fixture(results: Path, runs=RUNS) -> None:
    for i, entry in enumerate(runs):
        write_run(results, *make_run(i, entry))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    write_fixture(results)
    return results, build_report(results)


# ----------------------------------------------------------------------------------------------------------
CONFIG_SQL = """
WITH ok AS (
  SELECT *, images_per_s / world_size AS ips_dev,
         json_extract(spec_json, '$.micro_batch')::INT AS spec_micro
  FROM read_parquet('{runs}') WHERE status = 'ok'
), ranked AS (
  SELECT *, row_number() OVER w AS k, count(*) OVER (PARTITION BY arch, variant, epsilon, world_size,
         launcher, spec_micro) AS n
  FROM ok WINDOW w AS (PARTITION BY arch, variant, epsilon, world_size, launcher, spec_micro ORDER BY top1)
)
SELECT arch, variant, epsilon, world_size, launcher, spec_micro, any_value(n) AS n,
  -- olympic mean (drop min and max) from 5 runs on
  CASE WHEN any_value(n) >= 5 THEN avg(top1) FILTER (WHERE k > 1 AND k < n) ELSE avg(top1) END AS top1,
  CASE WHEN any_value(n) >= 5 THEN stddev_samp(top1) FILTER (WHERE k > 1 AND k < n)
       ELSE stddev_samp(top1) END AS top1_std,
  CASE WHEN any_value(n) >= 5 THEN (sum(params_active) - min(params_active) - max(params_active)) / (n - 2)
       ELSE avg(params_active) END AS params_active,
  CASE WHEN any_value(n) >= 5 THEN (sum(ips_dev) - min(ips_dev) - max(ips_dev)) / (n - 2)
       ELSE avg(ips_dev) END AS ips_dev,
  CASE WHEN any_value(n) >= 5 THEN (sum(images_per_s) - min(images_per_s) - max(images_per_s)) / (n - 2)
       ELSE avg(images_per_s) END AS ips
FROM ranked GROUP BY arch, variant, epsilon, world_size, launcher, spec_micro, n
"""


def duckdb_configs(results: Path) -> dict[tuple, dict]:
    runs = results / GRID / "runs" / "*.parquet"
    cur = duckdb.connect().execute(CONFIG_SQL.format(runs=runs))
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return {
        (r["arch"], r["variant"], r["epsilon"], r["world_size"], r["launcher"], r["spec_micro"]): r
        for r in rows
    }


def test_headline_numbers_equal_duckdb(report):
    results, paths = report
    expected = duckdb_configs(results)
    configs = {
        (c.arch, c.variant, c.epsilon, c.world_size, c.launcher, c.spec["micro_batch"]): c
        for c in paths.analysis.configs
        if c.ok_runs
    }
    assert configs.keys() == expected.keys()
    markdown = paths.markdown.read_text()
    lines = markdown.splitlines()
    for key, want in expected.items():
        c = configs[key]
        assert len(c.ok_runs) == want["n"]
        assert c.top1.mean == pytest.approx(want["top1"], abs=1e-12)
        assert c.params_active.mean == pytest.approx(want["params_active"], abs=1e-6)
        assert c.images_per_s_per_device.mean == pytest.approx(want["ips_dev"], abs=1e-9)
        assert c.images_per_s.mean == pytest.approx(want["ips"], abs=1e-9)
        # The same numbers, formatted here independently, are in the Markdown row of that configuration.
        mark = "†" if want["n"] >= 5 else ""
        top1 = f"{100 * want['top1']:.2f}"
        if want["top1_std"] is not None:
            top1 += f" ± {100 * want['top1_std']:.2f}"
        rows = [line for line in lines if line.startswith(f"| {c.label} |")]
        size_cells = [f"| {round(want['params_active']):,}", f"| {top1}{mark} |"]
        speed_cells = [f"| {want['ips']:,.0f}", f"| {want['ips_dev']:,.1f}"]
        for cells in (size_cells, speed_cells):
            assert any(all(cell in row for cell in cells) for row in rows), (c.label, cells, rows)
    # The olympic config: five runs, min and max of each quantity dropped.
    r50 = configs[("resnet50", "resnet", None, 4, "ray", 64)]
    assert r50.top1.olympic and r50.top1.mean == pytest.approx((0.7612 + 0.7598 + 0.7620) / 3)


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval, written out (Wilson 1927) rather than taken from the report's scipy."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_deployed_network_table_shows_test_top1_with_its_interval_and_the_pruning_check(report):
    results, paths = report
    markdown = paths.markdown.read_text()
    runs = results / GRID / "runs" / "*.parquet"
    single = duckdb.sql(
        f"SELECT arch, variant, top1, test_images, top1_gated, prune_logit_max_abs_diff FROM read_parquet('{runs}') "
        "WHERE status = 'ok' AND variant = 'posthoc' AND arch = 'resnet101'"
    ).fetchall()
    assert len(single) == 1
    _, _, top1, n, gated, diff = single[0]
    low, high = wilson(round(top1 * n), n)
    row = next(
        line
        for line in markdown.splitlines()
        if line.startswith("| ResNet-101 purged, k = 6 |") and f"| {n:,} |" in line  # the deployed table
    )
    assert f"| {n:,} | {100 * top1:.2f} | [{100 * low:.1f}, {100 * high:.1f}] | {100 * gated:.2f} |" in row
    assert row.endswith(f"| — | {diff:.2g} |")  # no ε gate to disagree; the purge's logit change
    eps_rows = [line for line in markdown.splitlines() if line.startswith("| ε-ResNet-") and " over " in line]
    assert eps_rows and all(line.endswith("| 0 | 0 |") for line in eps_rows)


def test_launcher_and_scaling_equal_duckdb(report):
    results, paths = report
    runs = results / GRID / "runs" / "*.parquet"
    con = duckdb.connect()
    ray, torchrun = con.execute(
        f"""SELECT (sum(images_per_s) FILTER (WHERE launcher = 'ray') - max(images_per_s) FILTER (WHERE
        launcher = 'ray') - min(images_per_s) FILTER (WHERE launcher = 'ray')) / 3,
        avg(images_per_s) FILTER (WHERE launcher = 'torchrun')
        FROM read_parquet('{runs}') WHERE arch = 'resnet50' AND variant = 'resnet' AND world_size = 4"""
    ).fetchone()
    (pair,) = paths.analysis.launcher_pairs
    assert pair.ratio == pytest.approx(ray / torchrun, abs=1e-12)
    markdown = paths.markdown.read_text()
    assert f"| {ray / torchrun:.3f} | {100 * (1 - ray / torchrun):.1f} % |" in markdown

    kinds = {(s.points[0].config.arch, s.kind): s for s in paths.analysis.scaling}
    assert set(kinds) == {("resnet50", "weak"), ("resnet101", "strong")}
    strong = con.execute(
        f"""SELECT world_size, global_batch, avg(images_per_s) FROM read_parquet('{runs}')
        WHERE arch = 'resnet101' AND variant = 'resnet' AND status = 'ok' GROUP BY ALL ORDER BY 1"""
    ).fetchall()
    assert {gb for _, gb, _ in strong} == {256}  # strong: the global batch stays put
    base = strong[0][2]
    for point, (ws, _, ips) in zip(kinds[("resnet101", "strong")].points, strong, strict=True):
        assert point.config.world_size == ws
        assert point.efficiency == pytest.approx(ips / (base * ws), abs=1e-12)
        assert f"| {100 * ips / (base * ws):.1f} % |" in markdown


def test_failures_and_provenance(report):
    _, paths = report
    markdown = paths.markdown.read_text()
    assert "| diverged | training loss is nan at epoch 7 (step 35,028); ε = 0.6 |" in markdown
    assert "| failed | torch.OutOfMemoryError: CUDA out of memory." in markdown
    assert "Traceback" not in markdown  # first line only
    assert "| Slurm jobs | 731204 (25), 731388 (1), 731389 (1) |" in markdown
    # A configuration with only a diverged run has no headline row, and no baseline-less Δ.
    assert "ε = 0.6 |" not in markdown.split("## 2.")[0]


def test_markdown_matches_snapshot(report):
    _, paths = report
    markdown = paths.markdown.read_text()
    assert "/tmp" not in markdown and str(paths.markdown.parent) not in markdown
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(markdown)
    assert SNAPSHOT.exists(), (
        "no snapshot yet: run with UPDATE_SNAPSHOTS=1 and review tests/snapshots/report.md"
    )
    assert markdown == SNAPSHOT.read_text(), "report.md changed: review, then UPDATE_SNAPSHOTS=1 to accept"


# ----------------------------------------------------------------------------------------------------------
def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium not installed (Debian package `chromium`; tests/system-deps.sh installs it)")
    return found


def _run_chromium(args: list[str], timeout: float = 60) -> str:
    # Own session, so a hung browser and its helper processes are killed as one group by our PID.
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout} s")
    return out


def test_html_renders_offline_in_chromium(report, tmp_path):
    from PIL import Image, ImageStat

    chromium = _chromium()
    _, paths = report
    html = paths.html.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "@import" not in html and "url(" not in html

    url = paths.html.resolve().as_uri()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ]
    shot, netlog = tmp_path / "report.png", tmp_path / "net.json"
    _run_chromium(
        [
            chromium,
            *flags,
            f"--user-data-dir={tmp_path / 'profile-shot'}",
            f"--log-net-log={netlog}",
            f"--screenshot={shot}",
            "--window-size=1400,4000",
            url,
        ]
    )
    dom = _run_chromium([chromium, *flags, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url])

    assert "<title>resnet-bench comparison report — imagenet</title>" in dom
    assert dom.count("<table") >= 8 and dom.count("<img") == 3
    assert dom.count('src="data:image/png;base64,') == 3

    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 4000)
    assert len(image.getcolors(maxcolors=1 << 20) or range(2)) > 50  # not one flat colour
    # Content all the way down: every quarter of the page has ink (tables, plots), not only the top.
    for i in range(4):
        band = image.crop((0, i * 1000, 1400, (i + 1) * 1000))
        assert max(ImageStat.Stat(band.convert("L")).stddev) > 10, f"band {i} of the screenshot is blank"

    assert page_requests(netlog) == []

    # The check above can see a page's requests: a page with a remote stylesheet and image shows up in it.
    leaky, leak_log = tmp_path / "leaky.html", tmp_path / "leak.json"
    leaky.write_text(
        '<link rel="stylesheet" href="https://cdn.invalid/a.css"><img src="http://cdn.invalid/b.png">'
    )
    _run_chromium(
        [
            chromium,
            *flags,
            f"--user-data-dir={tmp_path / 'profile-leak'}",
            f"--log-net-log={leak_log}",
            "--dump-dom",
            leaky.as_uri(),
        ]
    )
    assert sorted(page_requests(leak_log)) == ["http://cdn.invalid/b.png", "https://cdn.invalid/a.css"]


def page_requests(netlog: Path) -> list[str]:
    """URLs the page asked the network stack for.

    Chromium's own background traffic (time sync, component updater, account probes) starts in the browser
    process and is logged with initiator "not an origin"; a page's subresource requests carry the page's origin
    (for file:// pages the opaque origin "null"). file: and data: URLs never reach the network stack.
    """
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start_job
        and "url" in e.get("params", {})
        and e["params"].get("initiator") != "not an origin"
    ]


# ----------------------------------------------------------------------------------------------------------
def test_empty_results_dir(tmp_path):
    paths = build_report(tmp_path)
    assert paths.html.parent == tmp_path
    markdown = paths.markdown.read_text()
    assert "No runs found (grids: none)" in markdown
    assert "No ok run with both `top1` and `params_active`: nothing to plot." in markdown
    assert "<img" not in paths.html.read_text()


def test_only_failed_runs(tmp_path):
    write_fixture(tmp_path, [e for e in RUNS if e[12].get("status")])
    paths = build_report(tmp_path)
    assert paths.html.parent == tmp_path / GRID  # one grid: the report sits next to its tables
    markdown = paths.markdown.read_text()
    assert "No run finished with status ok (1 diverged, 1 failed); see section 6" in markdown
    assert "2 of 2 runs did not finish ok" in markdown
    assert "No ok runs, so no curves." in markdown


def test_single_run_without_curves_says_what_is_missing(tmp_path):
    row, _ = make_run(0, RUNS[0])
    write_run(tmp_path, row, [])
    out = tmp_path / "out"
    assert main(["report", str(tmp_path), "--grid", GRID, "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "No ε-ResNet and no post-hoc purged runs finished ok" in markdown
    assert "1 of 1 configurations have a single ok run: no standard deviation" in markdown
    assert "ResNet-50: only plain ResNet runs, nothing to compare." in markdown  # the headline sentence
    low, high = wilson(round(row["top1"] * row["test_images"]), row["test_images"])
    single = f"| ResNet-50 | 1 | {100 * row['top1']:.2f} | — | 1 run: [{100 * low:.2f}, {100 * high:.2f}] (test set) |"
    assert single + " baseline |" in markdown
    assert "No curve rows (`curves/*.parquet`) for any ok run." in markdown
    assert "none found (world sizes: 4)" in markdown
    assert "none found (launchers with a measured throughput: ray)" in markdown
    assert "| ResNet-50 | 1 | 25,557,032 | 25,557,032 | +0.0 % |" in markdown


def test_other_schema_version_is_one_line_error(tmp_path, capsys):
    row, _ = make_run(0, RUNS[0])
    schema = RUN_SCHEMA.with_metadata({"resnet_bench_schema_version": "99", "table": "runs"})
    (tmp_path / GRID / "runs").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([{**row, "schema_version": 99}], schema=schema),
        tmp_path / GRID / "runs" / "future.parquet",
    )
    with pytest.raises(
        UserError, match=f"schema version 99; this resnet-bench reads version {SCHEMA_VERSION}"
    ):
        build_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnet-bench report: error: ") and err.count("\n") == 1
    assert not list(tmp_path.rglob("report.*"))  # nothing written


def test_unknown_grid_is_an_error(tmp_path):
    with pytest.raises(UserError, match="grid 'nope' not found"):
        build_report(tmp_path, grids=["nope"])
