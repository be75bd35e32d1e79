"""The report's last section: where and with what the runs ran, and the runs the OOM fallback changed."""

from __future__ import annotations

import json
from datetime import datetime

from suite.report import compare
from suite.report.cells import where
from suite.report.data import Config, Inputs
from suite.report.document import DASH, Paragraph, Section, Table, fmt_num


def _values(pairs: list[tuple[str, int]], limit: int = 6) -> str:
    shown = [f"{v} ({n})" for v, n in pairs[:limit]]
    if len(pairs) > limit:
        shown.append(f"… {len(pairs) - limit} more")
    return ", ".join(shown) if shown else DASH


def _hosts(hosts: list[str], limit: int = 8) -> str:
    if not hosts:
        return DASH
    more = f", … {len(hosts) - limit} more" if len(hosts) > limit else ""
    return f"{len(hosts)}: {', '.join(hosts[:limit])}{more}"


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M UTC")


def _column(runs: list[dict], key: str) -> str:
    return _values(compare.counted(r.get(key) for r in runs))


def provenance(inputs: Inputs, configs: list[Config], many_grids: bool) -> Section:
    section = Section("7. Environment and provenance", "provenance")
    runs = inputs.runs
    if not runs:
        section.blocks.append(Paragraph("No runs."))
        return section
    section.blocks.append(
        Paragraph("Over all runs, any status; the number of runs with each value in brackets.")
    )
    devices = [
        None
        if r["device_name"] is None
        else f"{r['device_name']} ({fmt_num(r['device_peak_flops_per_s'], 0, 1e-12)} TFLOP/s peak, "
        f"{r['device_peak_source'] or 'source not recorded'})"
        for r in runs
    ]
    device_hours = (
        sum(r["world_size"] * (r["ended_at"] - r["started_at"]).total_seconds() for r in runs) / 3600
    )
    rows = [
        ("grids", _column(runs, "grid")),
        ("launchers", _column(runs, "launcher")),
        ("devices", _values(compare.counted(devices))),
        ("CPU model", _column(runs, "cpu_model")),
        ("threads per rank", _column(runs, "threads_per_rank")),
        ("precision", _column(runs, "precision")),
        ("resnet-bench", _column(runs, "suite_version")),
        ("torch", _column(runs, "torch_version")),
        ("DeepSpeed", _column(runs, "deepspeed_version")),
        ("Ray", _column(runs, "ray_version")),
        ("Python", _column(runs, "python_version")),
        ("CUDA / cuDNN / NCCL", _values(compare.counted(_gpu_stack(r) for r in runs))),
        ("GPU driver", _column(runs, "gpu_driver")),
        ("git sha", _column(runs, "git_sha")),
        ("Slurm jobs", _column(runs, "slurm_job_id")),
        ("hosts", _hosts(sorted({h for r in runs for h in (r["hosts"] or [])}))),
        ("period", f"{_iso(min(r['started_at'] for r in runs))} – {_iso(max(r['ended_at'] for r in runs))}"),
        ("device-hours", f"{fmt_num(device_hours, 1)} (world size × wall time, summed)"),
    ]
    section.blocks.append(Table(("what", "values (runs)"), tuple(rows), "ll"))
    section.blocks.extend(_reduced_batches(configs, many_grids))
    return section


def _gpu_stack(run: dict) -> str | None:
    parts = (run.get("cuda_version"), run.get("cudnn_version"), run.get("nccl_version"))
    return None if all(p is None for p in parts) else " / ".join(p or DASH for p in parts)


def _reduced_batches(configs: list[Config], many_grids: bool) -> list:
    """Runs the out-of-memory fallback changed: same global batch, another micro-batch (numerics, speed)."""
    hit = [(c, r) for c in configs for r in c.runs if (r.get("oom_retries") or 0) > 0]
    if not hit:
        return [
            Paragraph(
                "No run's micro-batch was reduced by the out-of-memory fallback (`oom_retry`); every row"
                " ran at its spec's micro-batch."
            )
        ]
    rows = tuple(
        (
            f"`{r['run_id']}`",
            c.label,
            where(c, many_grids),
            str(r["repeat"]),
            str(json.loads(r["spec_json"])["micro_batch"]),
            # A run that did not finish has no measured micro-batch: its row keeps the spec's.
            f"{r['micro_batch']} × {r['grad_accum']}" if r["status"] == "ok" else DASH,
            str(r["oom_retries"]),
            r["status"],
        )
        for c, r in hit
    )
    return [
        Paragraph(
            f"{len(hit)} {'run' if len(hit) == 1 else 'runs'} ran out of memory and retried with half the"
            " micro-batch and twice the accumulation: the global batch is kept, but step time and rounding"
            " are not those of the spec. `oom_retry: false` turns the fallback off (the run then fails)."
        ),
        Table(
            (
                "run",
                "configuration",
                "where",
                "repeat",
                "spec micro-batch",
                "ran micro × accum",
                "retries",
                "status",
            ),
            rows,
            "lllrrrrl",
        ),
    ]
