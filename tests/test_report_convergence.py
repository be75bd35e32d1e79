"""The report says whether the plain baseline stopped climbing, from the select curves of real Parquet rows."""

from __future__ import annotations

import math

import pytest

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
