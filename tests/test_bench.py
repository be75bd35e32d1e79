"""`resnet-bench bench`: the ratio/median/min–max/goal logic on made-up timings, the report's shape through the
CLI, and real benchmarks on tiny configurations (to prove the machinery works, not to time anything)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from benchmarks import runner
from benchmarks.launch import makespan_figures
from benchmarks.presets import QUICK
from benchmarks.session import Session
from benchmarks.stats import Goal, check, failed, interleave, paired_ratios, result, spread
from resnet_bench import main
from suite.spec import RunSpec

TINY = dataclasses.replace(
    QUICK,
    name="tiny",
    repetitions=2,
    warmup_steps=1,
    timed_steps=2,
    width=4,
    image_size=16,
    micro_batch=4,
    pruning_width=4,
    pruning_image_size=16,
    pruning_batch=4,
    pruning_batches=3,
    pipeline_image_size=32,
    pipeline_batch=4,
    pipeline_batches=2,
)


# ---------------------------------------------------------------------------------------------------------
# Statistics on fake timings


def test_goal_directions_and_text():
    assert Goal(">=", 0.97).met(0.97) and not Goal(">=", 0.97).met(0.96)
    assert Goal("<=", 0.05).met(0.01) and not Goal("<=", 0.05).met(0.06)
    assert not Goal(">=", 0.5).met(None)
    assert str(Goal(">=", 0.97)) == "≥ 0.97" and str(Goal("<=", 0.05)) == "≤ 0.05"
    with pytest.raises(ValueError):
        Goal(">", 1.0)


def test_spread_and_paired_ratios():
    s = spread([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.lo, s.hi, s.n) == (2.5, 1.0, 10.0, 4)
    assert paired_ratios([2.0, 3.0], [4.0, 3.0]) == [0.5, 1.0]
    with pytest.raises(ValueError):
        spread([])
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        paired_ratios([1.0], [0.0])


def test_interleave_alternates_which_side_goes_first():
    calls = []
    a, b = interleave(lambda: calls.append("a") or len(calls), lambda: calls.append("b") or len(calls), 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert a == [1, 4, 5] and b == [2, 3, 6]  # each side's results in its own order
    with pytest.raises(ValueError):
        interleave(lambda: 0, lambda: 0, 0)


def test_result_median_min_max_and_pass():
    # Fake images/s: the suite side 96–99 % of the bare side, one repetition disturbed.
    suite, bare = [96.0, 99.0, 50.0], [100.0, 100.0, 100.0]
    entry = result(paired_ratios(suite, bare), Goal(">=", 0.97))
    assert entry["ratio"] == 0.96 and entry["min"] == 0.5 and entry["max"] == 0.99
    assert entry["pass"] is False and entry["goal"] == 0.97 and entry["goal_op"] == ">="
    assert result([0.98, 0.97, 0.5], Goal(">=", 0.97))["pass"] is True  # the median decides


def test_result_fails_when_an_extra_check_fails():
    wait = check("data_wait_frac", [0.01, 0.09, 0.08], Goal("<=", 0.05))
    entry = result([1.2, 1.1, 1.3], Goal(">=", 1.0), extra=[wait])
    assert entry["checks"][0]["pass"] and not wait["pass"] and entry["pass"] is False
    assert [c["name"] for c in entry["checks"]] == ["ratio", "data_wait_frac"]


def test_failed_entry_has_every_required_key():
    entry = failed(Goal(">=", 0.9), "RuntimeError: boom")
    assert (
        entry["ratio"] is None
        and entry["pass"] is False
        and entry["goal"] == 0.9
        and "boom" in entry["error"]
    )


def test_makespan_figures():
    report = {
        "rows": [{"train_time_s": 10.0}] * 4,
        "concurrency": 2,
        "grid_s": 25.0,
        "wall_s": 31.0,
    }
    f = makespan_figures(report)
    assert f["ideal_s"] == 20.0 and f["ratio"] == 0.8 and f["wall_with_ray_s"] == 31.0
    assert f["overhead_per_point_s"] == 2.5  # (2 slots × 25 s − 40 s) over 4 points


# ---------------------------------------------------------------------------------------------------------
# The report through the CLI, with made-up benchmarks


def _fake_registry() -> dict[str, runner.Benchmark]:
    def steady(session: Session) -> dict:
        return result(paired_ratios([99.0, 98.0, 97.0], [100.0, 100.0, 100.0]), Goal(">=", 0.97))

    def broken(session: Session) -> dict:
        raise RuntimeError("no cluster today")

    return {
        "steady": runner.Benchmark("steady", "a ÷ b", Goal(">=", 0.97), steady),
        "broken": runner.Benchmark("broken", "c ÷ d", Goal(">=", 0.87), broken),
    }


def test_bench_json_through_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(runner, "_registry", _fake_registry)
    code = main(["bench", "--quick", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1  # one benchmark could not run
    assert report["steady"]["ratio"] == pytest.approx(0.98) and report["steady"]["pass"] is True
    assert report["broken"]["ratio"] is None and report["broken"]["pass"] is False
    assert "no cluster today" in report["broken"]["error"]
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["threads_per_rank"] == 1 and machine["versions"]["torch"]
    assert report["preset"] == "quick" and report["wall_s"] >= 0


def test_bench_table_and_only(monkeypatch, capsys):
    monkeypatch.setattr(runner, "_registry", _fake_registry)
    assert main(["bench", "--quick", "--only", "steady"]) == 0
    out = capsys.readouterr().out
    assert "steady" in out and "0.980" in out and "broken" not in out
    assert main(["bench", "--only", "nope"]) == 2  # a one-line usage error


def test_every_issue_key_is_registered():
    assert list(runner._registry()) == [
        "harness_overhead",
        "ray_overhead",
        "pruning_speedup",
        "grid_makespan",
        "data_pipeline",
        "view_cache",
        "input_scaling",
        "weak_scaling",
        "gate_sync",
    ]


# ---------------------------------------------------------------------------------------------------------
# Real benchmarks, tiny


def test_pruning_speedup_tiny():
    from benchmarks.pruning import pruning_speedup

    with Session(TINY) as session:
        entry = pruning_speedup(session)
    details = entry["details"]
    assert entry["ratio"] > 0 and len(entry["samples"]) == TINY.repetitions
    assert details["blocks_removed"] == 7 and details["flops_pruned"] < details["flops_unpruned"]
    assert entry["ratio"] == pytest.approx(details["speedup"]["median"] / details["flop_ratio"])


def test_data_pipeline_sides_tiny(tmp_path):
    from benchmarks.pipeline import imagenet_like, per_class_for, suite_rate, torchvision_rate

    root = imagenet_like(tmp_path / "data", per_class=per_class_for(3 * 4), val_per_class=1)
    assert suite_rate(root, size=32, batch=4, batches=2, epoch=0) > 0
    assert torchvision_rate(root, size=32, batch=4, batches=2) > 0


def test_view_cache_sides_tiny(tmp_path):
    from benchmarks.pipeline import epoch_rate
    from suite.data.config import DataConfig
    from suite.data.preflight import prepare_data
    from tests.data_trees import TWO_CLASSES, make_tree

    make_tree(tmp_path, TWO_CLASSES)
    cfg = DataConfig(
        backend="imagefolder", data_dir=str(tmp_path), image_size=8, augment="pad_crop", workers=0
    )
    info = prepare_data(cfg)
    for side in (cfg, dataclasses.replace(cfg, view_cache_bytes=0)):
        assert epoch_rate(side, info, batch=4, epochs=2) > 0


def test_input_scaling_tiny(tmp_path):
    from benchmarks.input_scaling import input_scaling

    tiny = dataclasses.replace(TINY, scaling_sizes=(300, 600), scaling_batch=8, scaling_batches=3)
    with Session(tiny) as session:
        entry = input_scaling(session)
    details = entry["details"]
    assert entry["ratio"] > 0 and len(entry["samples"]) == tiny.repetitions
    assert details["images"] == [300, 600] and details["startup_s_600"]["later"]["median"] > 0
    assert entry["checks"][1]["name"] == "shards_vs_folder" and entry["checks"][1]["value"] > 0


@pytest.mark.slow
def test_harness_overhead_tiny_through_real_workers():
    from benchmarks.training import harness_overhead

    with Session(TINY) as session:
        entry = harness_overhead(session)
    assert entry["ratio"] > 0 and len(entry["samples"]) == TINY.repetitions
    assert entry["details"]["threads"] == 1 and entry["details"]["timed_steps"] == TINY.timed_steps


@pytest.mark.slow
def test_weak_scaling_tiny_with_its_machine_ceiling():
    from benchmarks.training import weak_scaling

    with Session(TINY) as session:
        entry = weak_scaling(session)
    details = entry["details"]
    assert entry["ratio"] > 0 and len(entry["samples"]) == TINY.repetitions
    assert details["machine_ceiling"]["median"] > 0 and details["threads_per_rank"] == 1
    assert details["two_rank_images_per_s"]["median"] > 0


@pytest.mark.slow
def test_gate_sync_tiny_times_three_sides_on_two_ranks():
    from benchmarks.gate_sync import gate_sync

    with Session(TINY) as session:
        entry = gate_sync(session)
    details = entry["details"]
    assert entry["ratio"] > 0 and len(entry["samples"]) == TINY.repetitions
    assert details["step_vs_resnet"]["median"] > 0 and details["threads_per_rank"] == 1
    for side in ("resnet", "step", "local"):
        assert details[f"{side}_images_per_s"]["median"] > 0
    assert details["config"]["gate_sync"] == "local" and details["config"]["eps_warmup_epochs"] == 0


def test_bench_gpu_without_a_gpu_is_one_line_and_measures_nothing(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: bench --gpu measures there")
    assert main(["bench", "--gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "resnet-bench bench: error: bench --gpu measures on a GPU, and torch sees none on this machine"
        " (torch.cuda.is_available() is false); accepted: a machine where nvidia-smi lists a GPU"
    ]


def test_bench_gpu_sides_are_valid_specs_and_the_bare_loop_runs_bf16(tmp_path):
    from benchmarks.bare import bare_training
    from benchmarks.gpu import decode_specs, gpu_spec

    for spec in (gpu_spec(), gpu_spec(channels_last=True), gpu_spec(compile=True), *decode_specs(tmp_path)):
        RunSpec.from_dict(spec)  # every side is a spec the suite accepts
    tiny = RunSpec.from_dict(
        gpu_spec(width=4, image_size=32, small_stem=True, micro_batch=4, steps_per_epoch=3, warmup_steps=1)
    )
    out = bare_training(tiny)  # bf16 autocast, on whatever device this machine has
    assert out["images_per_s"] > 0 and out["mfu"] > 0 and out["timed_steps"] == 2
