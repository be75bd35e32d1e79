"""The report's sections 8 (where identities form) and 9 (degradation): real Parquet files, read back by DuckDB
and recomputed with scipy, against what report.md prints."""

from __future__ import annotations

import math
import re
import statistics

import duckdb
import pytest
from scipy import stats as scipy_stats

from suite.report import build_report
from suite.results import write_run
from suite.spec import RunSpec
from tests.rows import curve, ok_row

GRID = "deg"
DEPTHS = {"resnet50": 16, "resnet101": 33}


def _runs():
    """Plain and residual networks at two depths, 3 repeats each; deeper plain ones end on a higher loss."""
    for arch, blocks in DEPTHS.items():
        for variant in ("resnet", "plain"):
            for repeat in range(3):
                spec = RunSpec(arch=arch, variant=variant, repeat=repeat, seed=repeat, grid=GRID, width=8)
                deep = arch == "resnet101"
                last_loss = (
                    (0.9 if deep else 0.5) + 0.03 * repeat if variant == "plain" else 0.2 + 0.01 * repeat
                )
                rel = [None if variant == "plain" and b in (0, 3, 7, 7 + blocks - 10) else 0.05 + b / 100
                       for b in range(blocks)]  # fmt: skip
                curves = [
                    curve(
                        e, loss=last_loss + 0.5 * (1 - e), block_branch_rel_norm=rel, block_branch_max_abs=rel
                    )
                    for e in range(2)
                ]
                row = ok_row(
                    spec,
                    top1=(0.6 if variant == "plain" else 0.8) + 0.01 * repeat,
                    blocks_total=blocks,
                    blocks_removed=[],
                    blocks_discarded=0,
                    blocks_discarded_per_stage=[0, 0, 0, 0],
                )
                yield row, [{**c, "run_id": row["run_id"], "grid": GRID} for c in curves]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    for row, curves in _runs():
        write_run(results, row, curves)
    return results, build_report(results)


def _ci(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    half = scipy_stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, half


def test_the_degradation_table_equals_an_independent_computation(report):
    results, paths = report
    text = paths.markdown.read_text()
    section = text[text.index("## 9. Degradation") :]
    last = duckdb.sql(
        f"""SELECT r.arch, r.variant, c.loss, r.top1
            FROM read_parquet('{results / GRID / "runs" / "*.parquet"}') r
            JOIN read_parquet('{results / GRID / "curves" / "*.parquet"}') c USING (run_id)
            WHERE c.epoch = 1"""
    ).fetchall()
    for arch, title in (("resnet50", "ResNet-50"), ("resnet101", "ResNet-101")):
        line = next(x for x in section.splitlines() if x.startswith(f"| {title} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        for column, variant in ((3, "plain"), (4, "resnet")):
            mean, half = _ci([loss for a, v, loss, _ in last if a == arch and v == variant])
            assert cells[column] == f"{mean:.3f} ± {half:.3f}", (arch, variant)
        for column, variant in ((5, "plain"), (6, "resnet")):
            mean, half = _ci([100 * top1 for a, v, _, top1 in last if a == arch and v == variant])
            assert cells[column] == f"{mean:.1f} ± {half:.1f} %", (arch, variant)
    assert 'alt="training loss and test top-1 against depth' in paths.html.read_text()  # figures: HTML only


def test_where_identities_form_lists_the_closest_blocks_and_draws_a_heat_map_per_configuration(report):
    _, paths = report
    text = paths.markdown.read_text()
    section = text[text.index("## 8. Where identities form") : text.index("## 9. Degradation")]
    rows = [x for x in section.splitlines() if x.startswith("| ResNet-") or x.startswith("| Plain-")]
    assert len(rows) == 4  # one per configuration
    plain50 = next(x for x in rows if x.startswith("| Plain-50 |"))
    assert "1 (0.06), 2 (0.07), 4 (0.09)" in plain50  # blocks 0 and 3 change the shape: no value
    assert len(re.findall(r'alt="heat map of ‖F‖/‖x‖ per block and epoch', paths.html.read_text())) == 4


def test_a_network_purged_during_its_run_is_measured_in_the_unpruned_network_s_block_order(tmp_path):
    # A post-hoc run: trained whole (16 blocks), then purged of 3 and fine-tuned, so its last epoch measures 13.
    removed = [2, 5, 9]
    whole = [0.5 + b / 100 for b in range(16)]
    pruned = [v / 10 for b, v in enumerate(whole) if b not in removed]  # the fine-tune shrinks what is left
    spec = RunSpec(variant="posthoc", purge_blocks=3, finetune_epochs=1, grid=GRID, width=8, epochs=3)
    row = ok_row(spec, blocks_total=16, blocks_removed=removed, blocks_discarded=3)
    rels = [whole, whole, pruned]
    curves = [curve(e, block_branch_rel_norm=rel, block_branch_max_abs=rel) for e, rel in enumerate(rels)]
    write_run(tmp_path, row, [{**c, "run_id": row["run_id"], "grid": GRID} for c in curves])
    paths = build_report(tmp_path)
    text = paths.markdown.read_text()
    section = text[text.index("## 8. Where identities form") : text.index("## 9. Degradation")]
    (line,) = [x for x in section.splitlines() if x.startswith("| ResNet-50")]
    # blocks 0, 1, 3 are the closest of those kept, numbered over the unpruned network; 2 is gone
    assert "| 16 | 0 (0.05), 1 (0.051), 3 (0.053) | 2, 5, 9 |" in line
    assert "◀ marks the 3 blocks discarded" in paths.html.read_text()
