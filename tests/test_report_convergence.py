"""The report says whether the plain baseline stopped climbing, from the select curves of real Parquet rows."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy.stats import t as student_t

from suite.report import build_report
from suite.results import write_run
from suite.spec import RunSpec
from tests.rows import ok_row

SELECT_IMAGES = 400


def write_grid(results, grid: str, curve: list[float]) -> str:
    for repeat in range(2):
        spec = RunSpec(grid=grid, epochs=len(curve), repeat=repeat, seed=repeat)
        points = [
            {"epoch": e, "loss": 1.0, "top1_select": a, "lr": 0.1, "elapsed_s": float(e + 1)}
            for e, a in enumerate(curve)
        ]
        write_run(results, ok_row(spec, epochs=len(curve), select_images=SELECT_IMAGES), points)
    return build_report(results, grids=[grid]).markdown.read_text()


@pytest.mark.parametrize(
    "curve, verdict",
    [
        ([0.3, 0.5, 0.6, 0.70, 0.71, 0.70, 0.72, 0.72], "it has stopped climbing"),
        ([0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.62, 0.70], "it was still climbing"),
    ],
)
def test_the_headline_says_whether_the_plain_resnet_converged(tmp_path, curve, verdict):
    markdown = write_grid(tmp_path, "g", curve)
    gain = (curve[-1] - curve[5]) * 100  # epoch 6 of 8 is three quarters through
    noise = 1.96 * math.sqrt(curve[-1] * (1 - curve[-1]) / SELECT_IMAGES) * 100
    expected = (
        f"Convergence of the plain ResNet-50: select top-1 rose {gain:.1f} pp over the last quarter of training"
        f" (epoch 6 → 8, mean of 2 runs), {'within' if gain <= noise else 'more than'} the select split's 95 %"
        f" sampling error of ±{noise:.1f} pp: {verdict}"
    )
    assert expected in markdown


def test_too_short_a_curve_gets_no_convergence_line(tmp_path):
    assert "Convergence of the plain" not in write_grid(tmp_path, "g", [0.3, 0.5, 0.6])


def write_budget(results, grid: str, epochs: int, top1s: list[float]) -> None:
    for repeat, top1 in enumerate(top1s):
        spec = RunSpec(grid=grid, epochs=epochs, repeat=repeat, seed=repeat)
        write_run(results, ok_row(spec, epochs=epochs, top1=top1), [])


@pytest.mark.parametrize(
    "longer, verdict, meaning",
    [
        (
            [0.92, 0.95, 0.90],
            "no significant difference",
            "pp is as compatible with them), so 8 epochs were enough to that precision.",
        ),
        ([0.97, 0.99, 0.95], "better", "so at 8 epochs it had not converged"),
    ],
)
def test_a_longer_twin_in_a_companion_grid_tells_whether_the_budget_was_enough(
    tmp_path, longer, verdict, meaning
):
    shorter = [0.91, 0.96, 0.88]
    write_budget(tmp_path, "g", 8, shorter)
    write_budget(tmp_path, "g-budget", 12, longer)
    markdown = build_report(tmp_path, grids=["g", "g-budget"]).markdown.read_text()
    diffs = [a - b for a, b in zip(longer, shorter, strict=True)]
    mean = statistics.fmean(diffs) * 100
    half = student_t.ppf(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3) * 100
    assert (
        f"Budget check of the plain ResNet-50 at 8 epochs: trained 12 epochs (grid g-budget), the same "
        f"configuration's test top-1 changes by {mean:+.1f} ± {half:.1f} pp (12 − 8 epochs, paired by repeat, "
        f"3 pairs, mean ± 95 % t-interval): {verdict}; "
    ) in markdown
    assert meaning in markdown
    if verdict == "no significant difference":
        assert f"(a gain of up to {mean + half:.1f} pp is as compatible with them)" in markdown
    assert (
        markdown.count("Budget check of the plain") == 1
    )  # the longer twin has none: nothing longer than it


def test_a_plain_resnet_with_no_longer_twin_gets_no_budget_line(tmp_path):
    write_budget(tmp_path, "g", 8, [0.9, 0.8])
    write_budget(tmp_path, "g", 12, [0.9, 0.8])
    # the twin differs in more than the budget: another width is another configuration
    for repeat in range(2):
        spec = RunSpec(grid="g", epochs=16, width=16, repeat=repeat, seed=repeat)
        write_run(tmp_path, ok_row(spec, epochs=16, top1=0.95), [])
    markdown = build_report(tmp_path, grids=["g"]).markdown.read_text()
    assert markdown.count("Budget check of the plain") == 1
    assert (
        "at 8 epochs: trained 12 epochs, the same configuration's test top-1 changes by +0.0 ± 0.0 pp"
        in markdown
    )
