"""The report's statistics against an independent computation over the Parquet rows.

Every arm of the controls grid (plain ResNet, + side head, ε-ResNet with and without LR restarts, the ε net's
architecture from scratch, the matched post-hoc purge) is written as real rows with `RunSpec`, the report is
built, and its numbers are recomputed here with DuckDB SQL over the Parquet files (means, sample deviations,
the repeat-by-repeat join) and the t quantile, then formatted independently and looked for in report.md.

The accuracies are built so that only a *paired* comparison reaches the verdicts asserted: the arms share
each repeat's offset (±2 pp between repeats, far more than the ≈1 pp effects), as runs that share a seed and a
select split do. An unpaired comparison of the means would find no difference anywhere.
"""

from __future__ import annotations

import math

import duckdb
import pytest
from scipy.stats import t as student_t

from suite.report import build_report
from suite.results import write_run
from suite.spec import RunSpec
from tests.rows import ok_row
from tests.test_report import wilson

GRID = "controls"
TEST_IMAGES = 1000  # top-1 values below are k / 1000: whole counts of correct test images

# (spec fields, {repeat: top1}; None: the repeat failed)
ARMS = [
    ({"variant": "resnet"}, {0: 0.780, 1: 0.800, 2: 0.820, 3: None}),
    ({"variant": "resnet", "side_head": True}, {0: 0.785, 1: 0.806, 2: 0.824}),
    ({"variant": "eps", "epsilon": 0.5}, {0: 0.768, 1: 0.789, 2: 0.807, 3: 0.790}),
    ({"variant": "eps", "epsilon": 0.5, "lr_reset_on_discard": False}, {0: 0.790, 1: 0.790, 2: 0.810}),
    ({"variant": "scratch", "epsilon": 0.5}, {0: 0.770, 1: 0.795, 2: 0.812}),
    ({"variant": "posthoc", "epsilon": 0.5, "purge_blocks": "match", "finetune_epochs": 1}, {0: 0.771}),
]
LABELS = {
    ("resnet", False, False, "0"): "ResNet-50",
    ("resnet", True, False, "0"): "ResNet-50 + side head",
    ("eps", True, True, "0"): "ε-ResNet-50, ε = 0.5",
    ("eps", True, False, "0"): "ε-ResNet-50, ε = 0.5, no LR restarts",
    ("scratch", False, False, "0"): "ResNet-50 from scratch at ε-50's (ε = 0.5) architecture",
    ("posthoc", False, False, "match"): "ResNet-50 purged, k = ε-50's (ε = 0.5), fine-tuned 1 ep",
}
# What each arm's paired interval must say about these rows (checked against the SQL as well).
VERDICTS = {
    ("resnet", True, False, "0"): "better",
    ("eps", True, True, "0"): "worse",
    ("eps", True, False, "0"): "no significant difference",
    ("scratch", False, False, "0"): "worse",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    for fields, top1s in ARMS:
        for repeat, top1 in top1s.items():
            spec = RunSpec(grid=GRID, epochs=2, repeat=repeat, seed=100 + repeat, **fields)
            if top1 is None:
                row = ok_row(spec, status="failed", error="boom", top1=None, top5=None, test_images=None)
            else:
                row = ok_row(spec, top1=top1, test_images=TEST_IMAGES)
            write_run(results, row, [])
    return results, build_report(results)


def _sql(results, query: str) -> list[dict]:
    runs = results / GRID / "runs" / "*.parquet"
    cur = duckdb.connect().execute(query.format(runs=runs))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


ARM_COLUMNS = (
    "variant, side_head, lr_reset_on_discard, json_extract_string(spec_json, '$.purge_blocks') AS purge"
)
CONFIG_SQL = f"""
SELECT {ARM_COLUMNS}, count(*) AS n, avg(top1) AS mean, stddev_samp(top1) AS std
FROM read_parquet('{{runs}}') WHERE status = 'ok' GROUP BY ALL
"""
# Each arm's rows joined to the plain ResNet's on the repeat, both ok: the pairs.
PAIRED_SQL = f"""
WITH ok AS (SELECT *, {ARM_COLUMNS} FROM read_parquet('{{runs}}') WHERE status = 'ok'),
base AS (SELECT repeat, top1 FROM ok WHERE variant = 'resnet' AND NOT side_head)
SELECT ok.variant, ok.side_head, ok.lr_reset_on_discard, ok.purge, count(*) AS n,
       avg(ok.top1 - base.top1) AS mean, stddev_samp(ok.top1 - base.top1) AS std
FROM ok JOIN base USING (repeat) WHERE NOT (ok.variant = 'resnet' AND NOT ok.side_head) GROUP BY ALL
"""


# Each scratch row joined to the row its parent_run_id names: the pairs share seed and select split.
SCRATCH_PARENT_SQL = """
WITH ok AS (SELECT * FROM read_parquet('{runs}') WHERE status = 'ok')
SELECT count(*) AS n, avg(c.top1 - p.top1) AS mean, stddev_samp(c.top1 - p.top1) AS std
FROM ok c JOIN ok p ON c.parent_run_id = p.run_id WHERE c.variant = 'scratch'
"""


def _key(r: dict) -> tuple:
    return (r["variant"], r["side_head"], r["lr_reset_on_discard"], r["purge"])


def _half(n: int, std: float) -> float:
    return float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def _row(markdown: str, label: str) -> str:
    """The row of `label` in the table of top-1 statistics (the other tables have rows of that label too)."""
    table = markdown.split("*Top-1 over repeats, and against the plain ResNet*")[1].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith(f"| {label} |")]
    assert len(rows) == 1, (label, rows)
    return rows[0]


def test_t_quantile_is_the_two_sided_95_percent_one():
    # Printed tables of Student's t (two-sided 95 %): 12.706 at 1 degree of freedom, 4.303 at 2, 3.182 at 3.
    assert [round(float(student_t.ppf(0.975, df)), 3) for df in (1, 2, 3)] == [12.706, 4.303, 3.182]


def test_every_arm_has_its_own_label(report):
    _, paths = report
    configs = {(c.variant, c.side_head, c.lr_reset, str(c.purge_blocks)): c for c in paths.analysis.configs}
    assert len(configs) == len(ARMS)
    markdown = paths.markdown.read_text()
    for label in LABELS.values():
        assert f"| {label} |" in markdown, label
    posthoc = next(c for c in paths.analysis.configs if c.variant == "posthoc")
    assert posthoc.purge_blocks == "match" and posthoc.blocks_discarded.mean == 2  # k: the row's discards


def test_mean_and_t_interval_equal_duckdb(report):
    results, paths = report
    markdown = paths.markdown.read_text()
    expected = _sql(results, CONFIG_SQL)
    assert {_key(r): r["n"] for r in expected} == {
        k: len([v for v in a[1].values() if v]) for k, a in _arms()
    }
    for want in expected:
        if want["n"] == 1:
            continue  # test_single_run_shows_its_binomial_interval_and_no_conclusion
        label = LABELS[_key(want)]
        row = _row(markdown, label)
        mean = f"{100 * want['mean']:.2f}"
        half = _half(want["n"], want["std"])
        cells = f" | {mean} | {100 * want['std']:.2f} | {mean} ± {100 * half:.2f} |"
        assert cells in row, (label, cells, row)
        assert row.split(" | ")[1].split()[0] == str(want["n"])  # runs: n ok (and the others, in brackets)
    # The n = 3 plain ResNet: its failed fourth repeat is not a value.
    plain = next(w for w in expected if _key(w) == ("resnet", False, False, "0"))
    assert plain["n"] == 3 and plain["mean"] == pytest.approx(0.800)


def _arms():
    for fields, top1s in ARMS:
        spec = RunSpec(grid=GRID, epochs=2, **fields)
        key = (spec.variant, spec.side_head, spec.variant == "eps" and spec.lr_reset_on_discard)
        yield (*key, str(spec.purge_blocks)), (fields, top1s)


def test_paired_difference_and_verdict_equal_duckdb(report):
    results, paths = report
    markdown = paths.markdown.read_text()
    expected = {_key(r): r for r in _sql(results, PAIRED_SQL)}
    assert expected.keys() == set(VERDICTS) | {("posthoc", False, False, "match")}
    headline = markdown.split("### ")[0]
    for key, verdict in VERDICTS.items():
        want = expected[key]
        assert want["n"] == 3  # ε's repeat 3 has no ok plain ResNet to pair with
        half = _half(want["n"], want["std"])
        low, high = want["mean"] - half, want["mean"] + half
        assert verdict == ("better" if low > 0 else "worse" if high < 0 else "no significant difference")
        cells = f"| {100 * want['mean']:+.2f} ± {100 * half:.2f} | {want['n']} | {verdict} |"
        assert cells in _row(markdown, LABELS[key]), (key, cells)
    # The headline sentence says the same for the ε-ResNet, in words.
    eps = expected[("eps", True, True, "0")]
    half = _half(eps["n"], eps["std"])
    sentence = (
        f"ε-ResNet (ε = 0.5) is {100 * abs(eps['mean']):.2f} ± {100 * half:.2f} pp below the plain ResNet over "
        f"{eps['n']} paired repeats — worse"
    )
    assert sentence in headline
    assert headline.count("ResNet-50: ") == 1  # one sentence for the one depth
    # Unpaired, the same rows would support nothing: the repeats' spread swamps the difference of the means.
    means = {_key(r): r for r in _sql(results, CONFIG_SQL)}
    a, b = means[("eps", True, True, "0")], means[("resnet", False, False, "0")]
    welch = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
    assert abs(a["mean"] - b["mean"]) < 2 * welch


def test_single_run_shows_its_binomial_interval_and_no_conclusion(report):
    results, paths = report
    markdown = paths.markdown.read_text()
    ((top1, n),) = [
        (r["top1"], r["test_images"])
        for r in _sql(
            results, "SELECT top1, test_images FROM read_parquet('{runs}') WHERE variant = 'posthoc'"
        )
    ]
    low, high = wilson(round(top1 * n), n)
    label = LABELS[("posthoc", False, False, "match")]
    row = _row(markdown, label)
    assert f"| 1 | {100 * top1:.2f} | — | 1 run: [{100 * low:.2f}, {100 * high:.2f}] (test set) |" in row
    assert row.endswith("| 1 | no conclusion (1 pair) |")
    assert (
        "the post-hoc purge (as many blocks as ε-ResNet (ε = 0.5) discarded, fine-tuned 1 ep): " in markdown
    )
    assert "1 of 6 configurations have a single ok run" in markdown


def test_children_against_their_parent_equal_duckdb(report):
    results, paths = report
    headline = paths.markdown.read_text().split("### ")[0]
    (want,) = _sql(results, SCRATCH_PARENT_SQL)
    assert want["n"] == 3
    half = _half(want["n"], want["std"])
    side = "above" if want["mean"] > 0 else "below"
    assert (
        f"pruned architecture re-trained from scratch is {100 * abs(want['mean']):.2f} ± {100 * half:.2f} pp"
        f" {side} its ε parent over 3 paired repeats"
    ) in headline
    assert "ResNet-50 against the ε parent (same seed and select split): " in headline


def test_multiplicity_holds_the_headline_s_verdicts_to_95_percent_together(report):
    results, paths = report
    headline = paths.markdown.read_text().split("### ")[0]
    against_resnet = [r for r in _sql(results, PAIRED_SQL) if r["n"] >= 2]
    (against_parent,) = _sql(results, SCRATCH_PARENT_SQL)
    # The post-hoc arm has one pair with the ResNet and with its parent: no interval, so it does not count.
    named = [(f"{LABELS[_key(r)]} − ResNet", r) for r in against_resnet]
    named.append((f"{LABELS[('scratch', False, False, '0')]} − ε parent", against_parent))
    n = len(named)
    assert n == 5
    stand, fall = [], []
    for name, r in named:
        half = _half(r["n"], r["std"])
        if abs(r["mean"]) <= half:
            continue  # no significant difference at 95 % alone: nothing to hold
        joint = float(student_t.ppf(1 - 0.05 / (2 * n), r["n"] - 1)) * r["std"] / math.sqrt(r["n"])
        assert joint > half
        (stand if abs(r["mean"]) > joint else fall).append(
            f"{name}, {100 * r['mean']:+.2f} ± {100 * joint:.2f} pp"
        )
    assert stand and fall  # the rows are built so that the joint intervals keep some verdicts and drop others
    assert f"make {n} paired comparisons, each at 95 %" in headline
    assert f"{len(stand)} of the {len(stand) + len(fall)} better/worse verdicts stand: " in headline
    for text in stand + fall:
        assert text in headline, text
    sentence = next(line for line in headline.splitlines() if line.startswith("Multiplicity: "))
    assert sentence.index("These fall to no significant difference") > max(sentence.index(t) for t in stand)
    assert sentence.index("These fall to no significant difference") < min(sentence.index(t) for t in fall)
