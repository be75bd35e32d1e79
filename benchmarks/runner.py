"""The benchmark registry and `resnet-bench bench [--quick] [--json] [--only KEY]`.

`--json` prints one object: a key per benchmark (each with at least `ratio`, `goal` and `pass`) and
`machine` (cores, threads, load, library versions); otherwise a table. Progress goes to stderr, so the
JSON on stdout stays parseable. A benchmark that cannot run gets `ratio: null, pass: false, error: …` and the
others still run.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from benchmarks import gate_sync, gpu, input_scaling, launch, pipeline, pruning, training
from benchmarks.machine import load_average, machine_info
from benchmarks.presets import FULL, QUICK, Preset
from benchmarks.session import Session
from benchmarks.stats import Goal, failed
from suite.errors import UserError


@dataclass(frozen=True)
class Benchmark:
    key: str
    measures: str  # numerator ÷ denominator, in words
    goal: Goal
    run: Callable[[Session], dict]
    workers: tuple[str, ...] = ()  # persistent workers it uses (started up front, together)


def _registry() -> dict[str, Benchmark]:
    entries = (
        Benchmark(
            "harness_overhead",
            "suite timed-window img/s ÷ bare PyTorch loop (ResNet-50 CPU scale, 1 rank)",
            training.HARNESS_GOAL,
            training.harness_overhead,
            ("suite1", "bare"),
        ),
        Benchmark(
            "ray_overhead",
            "2 ranks via the Ray launcher ÷ via torchrun (timed-window img/s)",
            launch.RAY_OVERHEAD_GOAL,
            launch.ray_overhead,
        ),
        Benchmark(
            "pruning_speedup",
            "(pruned ÷ unpruned inference img/s) ÷ (FLOPs unpruned ÷ pruned)",
            pruning.GOAL,
            pruning.pruning_speedup,
        ),
        Benchmark(
            "grid_makespan",
            "ideal makespan ÷ actual wall time, small grid on a local Ray",
            launch.MAKESPAN_GOAL,
            launch.grid_makespan,
        ),
        Benchmark(
            "data_pipeline",
            "suite loader img/s per worker ÷ torchvision ImageFolder; data wait in training",
            pipeline.GOAL,
            pipeline.data_pipeline,
            ("suite1",),
        ),
        Benchmark(
            "view_cache",
            "shapes-set epoch img/s (12 px, pad_crop) with decoded views kept ÷ decoded every epoch",
            pipeline.VIEW_CACHE_GOAL,
            pipeline.view_cache,
        ),
        Benchmark(
            "input_scaling",
            "preflight without ÷ with the dataset manifest (largest tree); shard ÷ folder loader img/s",
            input_scaling.GOAL,
            input_scaling.input_scaling,
        ),
        Benchmark(
            "weak_scaling",
            "2-rank img/s ÷ (2 × 1-rank img/s), gloo, 1 thread per rank",
            training.WEAK_SCALING_GOAL,
            training.weak_scaling,
            ("suite1", "suite2", "suite1b"),
        ),
        Benchmark(
            "gate_sync",
            "ε-ResNet (gate_sync: local) ÷ plain ResNet, 2-rank timed-window img/s; gate_sync: step beside it",
            gate_sync.GOAL,
            gate_sync.gate_sync,
            ("suite2",),
        ),
    )
    return {b.key: b for b in entries}


def _gpu_registry() -> dict[str, Benchmark]:
    """`bench --gpu` (benchmarks/gpu.py): one GPU, ResNet-50 at 224 px in bf16."""
    entries = (
        Benchmark(
            "gpu_harness_overhead",
            "suite timed-window img/s ÷ bare autocast-bf16 loop, ResNet-50 224 px, 1 GPU",
            gpu.HARNESS_GOAL,
            gpu.gpu_harness_overhead,
            ("suite1", "bare"),
        ),
        Benchmark(
            "gpu_channels_last",
            "img/s with channels_last ÷ without",
            gpu.KNOB_GOAL,
            gpu.gpu_channels_last,
            ("suite1",),
        ),
        Benchmark(
            "gpu_compile", "img/s with torch.compile ÷ without", gpu.KNOB_GOAL, gpu.gpu_compile, ("suite1",)
        ),
        Benchmark(
            "gpu_decode",
            "img/s with decode: gpu ÷ decode: cpu on 500×375 JPEGs; data wait with GPU decode",
            gpu.KNOB_GOAL,
            gpu.gpu_decode,
            ("suite1",),
        ),
    )
    return {b.key: b for b in entries}


def run_benchmarks(
    preset: Preset, only: list[str] | None = None, *, registry: dict[str, Benchmark] | None = None, log=None
) -> dict:
    """Run the selected benchmarks (all by default) in registry order; the report as a plain dict."""
    registry = registry if registry is not None else _registry()
    unknown = sorted(set(only or ()) - set(registry))
    if unknown:
        raise UserError(f"unknown benchmark {unknown[0]!r}; accepted: {', '.join(registry)}")
    chosen = [b for key, b in registry.items() if not only or key in only]
    report: dict = {"machine": machine_info(), "preset": preset.name}
    start = time.perf_counter()
    with Session(preset, log=log) as session:
        try:
            session.start_workers(sorted({w for b in chosen for w in b.workers}))
        except Exception as e:
            session.log(f"workers failed to start: {e}")
        for bench in chosen:
            session.log(f"{bench.key}: running")
            try:
                report[bench.key] = bench.run(session)
            except Exception as e:  # one broken benchmark must not hide the others' results
                report[bench.key] = failed(
                    bench.goal, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
                )
            entry = report[bench.key]
            session.log(f"{bench.key}: ratio {_fmt(entry['ratio'])} ({'pass' if entry['pass'] else 'MISS'})")
    report["machine"]["loadavg_end"] = load_average()
    report["wall_s"] = time.perf_counter() - start
    return report


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def print_table(report: dict, registry: dict[str, Benchmark] | None = None) -> None:
    registry = registry if registry is not None else _registry()
    machine = report["machine"]
    table = Table(
        title=f"resnet-bench bench ({report['preset']}, {report['wall_s']:.0f} s)",
        caption=(
            f"{machine['cpu']}, {machine['cores']} cores, 1 thread per rank; load "
            f"{machine['loadavg_start']} → {machine['loadavg_end']}; torch {machine['versions']['torch']}, "
            f"deepspeed {machine['versions']['deepspeed']}, ray {machine['versions']['ray']}"
        ),
    )
    for col in ("benchmark", "ratio", "min–max", "goal", "", "what"):
        table.add_column(col, justify="right" if col in ("ratio", "min–max") else "left")
    for key, bench in registry.items():
        if key not in report:
            continue
        entry = report[key]
        extra = [f"{c['name']} {_fmt(c['value'])} ({c['goal_text']})" for c in entry["checks"][1:]]
        what = bench.measures + "".join(f"; {e}" for e in extra)
        if entry.get("error"):
            what = f"[red]error:[/red] {entry['error'].splitlines()[0]}"
        table.add_row(
            key,
            _fmt(entry["ratio"]),
            f"{_fmt(entry['min'])}–{_fmt(entry['max'])}" if entry["ratio"] is not None else "—",
            entry["goal_text"],
            "[green]pass[/green]" if entry["pass"] else "[red]miss[/red]",
            what,
        )
    Console(width=None if Console().is_terminal else 160).print(table)


def bench_command(*, quick: bool, as_json: bool, only: list[str] | None = None, on_gpu: bool = False) -> int:
    """`resnet-bench bench`: exit 0 when every benchmark measured (goals met or not), 1 when one failed.

    `on_gpu` (`--gpu`): the GPU benchmarks instead; without a GPU, a one-line `UserError` before anything runs.
    """
    if on_gpu:
        gpu.require_gpu()
    registry = _gpu_registry() if on_gpu else _registry()
    report = run_benchmarks(QUICK if quick else FULL, only, registry=registry)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_table(report, registry)
    keys = [k for k in report if isinstance(report[k], dict) and "ratio" in report[k]]
    return 1 if any(report[k].get("error") for k in keys) else 0
