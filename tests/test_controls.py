"""The controls that isolate the purge: side head on a plain ResNet, the ε parent's architecture re-trained from
scratch, a post-hoc purge of as many blocks as the parent discarded, ε without its LR restarts.

Grids are read by the real loader; runs are real DeepSpeed engines (CPU, gloo), launched as a user would.
"""

from __future__ import annotations

import textwrap

import pytest

from launchers.grid import load_grid, purge_sources
from launchers.plan import estimate_seconds, longest_first
from suite.data.config import DatasetInfo
from suite.errors import UserError
from suite.results import read_curves, read_runs, write_run
from suite.row import failure_row
from suite.spec import RunSpec
from tests.rows import ok_row
from tests.test_ray_grid import resnet_bench
from tests.test_train import SMALL, run_one, write_config

# The grid syntax of the controls, exactly as users write it.
CONTROLS = """
repeats: 3
defaults: {arch: resnet50}
axes: {variant: [eps, scratch], epsilon: [0.5]}
points:
  - {variant: resnet}
  - {variant: resnet, side_head: true}
  - {variant: posthoc, epsilon: 0.5, purge_blocks: match, finetune_epochs: 1}
"""


def grid_of(tmp_path, text: str, name: str = "controls"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_controls_grid_expands_to_15_points_with_parents_first(tmp_path):
    grid = load_grid(grid_of(tmp_path, CONTROLS))
    assert len(grid.specs) == 15
    by_id = {s.run_id: s for s in grid.specs}
    kinds = [(s.variant, s.side_head) for s in grid.specs]
    assert sorted(set(kinds)) == [
        ("eps", True),
        ("posthoc", False),
        ("resnet", False),
        ("resnet", True),
        ("scratch", False),
    ]
    first_child = min(i for i, s in enumerate(grid.specs) if s.has_parent)
    assert all(s.has_parent for s in grid.specs[first_child:])  # every parent is listed before any child
    for spec in grid.specs[first_child:]:
        parent = by_id[spec.parent.run_id]  # the parent is a point of the grid, same ε and repeat
        assert (parent.variant, parent.epsilon, parent.repeat, parent.seed) == (
            "eps",
            spec.epsilon,
            spec.repeat,
            spec.seed,
        )
    assert {s.epsilon for s in grid.specs if s.variant == "resnet"} == {None}


@pytest.mark.parametrize(
    "body, fragment",
    [
        (
            "axes: {variant: [scratch], epsilon: [0.5]}\n",
            "variant 'scratch' copies the discards of an eps point with epsilon 0.5",
        ),
        ("points: [{variant: scratch}]\n", "variant 'scratch' with a parent needs epsilon"),
        (
            "points: [{variant: posthoc, purge_blocks: half}]\n",
            "purge_blocks 'half'; accepted: an integer ≥ 0 or 'match'",
        ),
        (
            "points: [{variant: posthoc, purge_blocks: 2, epsilon: 0.5}]\n",
            "scratch and `purge_blocks: match` name their ε parent by it",
        ),
        (
            "points: [{variant: eps, epsilon: 0.5}, {variant: posthoc, epsilon: 0.2, purge_blocks: match}]\n",
            "copies the discards of an eps point with epsilon 0.2",
        ),
    ],
)
def test_a_child_without_its_parent_is_a_one_line_error(tmp_path, body, fragment):
    with pytest.raises(UserError) as e:
        load_grid(grid_of(tmp_path, "defaults: {epochs: 2}\n" + body))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_side_head_is_resolved_so_one_configuration_has_one_run_id():
    assert (
        RunSpec(variant="eps", epsilon=0.5).run_id
        == RunSpec(variant="eps", epsilon=0.5, side_head=True).run_id
    )
    assert RunSpec().side_head is False and RunSpec(variant="scratch", epsilon=0.5).side_head is False


def test_a_posthoc_point_runs_after_the_plain_point_whose_network_it_purges(tmp_path):
    text = """
    defaults: {arch: resnet50, width: 4, image_size: 32, epochs: 4}
    points:
      - {variant: posthoc, purge_blocks: 2, finetune_epochs: 1}
      - {variant: resnet}
      - {variant: posthoc, purge_blocks: 3, width: 8}
    """
    grid = load_grid(grid_of(tmp_path, text))
    assert [(s.variant, s.purge_blocks) for s in grid.specs] == [
        ("resnet", 0),
        ("posthoc", 3),
        ("posthoc", 2),
    ]
    plain = grid.specs[0]
    sources = purge_sources(grid.specs)
    # The width-8 point's plain training is not in the grid: it trains its own network (and runs early).
    assert {child: s.run_id for child, s in sources.items()} == {grid.specs[2].run_id: plain.run_id}
    assert grid.specs[2].purged_from == plain
    info = DatasetInfo(
        backend="shapes", root=None, num_classes=10, train_size=640, val_size=64, corrupt_files=()
    )
    handed, own = (estimate_seconds(grid.specs[2], info, 1e9, 0.2, trains=t) for t in (False, True))
    assert handed == pytest.approx(own / 5)  # 1 fine-tune epoch of 4 + 1


def test_each_wave_starts_its_longest_points_first(tmp_path):
    text = """
    defaults: {width: 4, image_size: 32, epochs: 4}
    axes: {arch: [resnet50, resnet152], variant: [resnet, eps], epsilon: [0.5]}
    points:
      - {arch: resnet50, variant: posthoc, epsilon: 0.5, purge_blocks: match, finetune_epochs: 1}
      - {arch: resnet152, variant: resnet, side_head: true}
    """
    grid = load_grid(grid_of(tmp_path, text))
    info = DatasetInfo(
        backend="shapes", root=None, num_classes=10, train_size=640, val_size=64, corrupt_files=()
    )
    sources = purge_sources(grid.specs)
    order = longest_first(grid.specs, dict.fromkeys(grid.specs, info), sources)
    labels = [(s.arch, s.variant, s.side_head) for s in order]
    # ResNet-152's three points first, in grid order among equals; the post-hoc point, which only fine-tunes the
    # plain ResNet-50's network, last.
    assert labels == [
        ("resnet152", "resnet", False),
        ("resnet152", "eps", True),
        ("resnet152", "resnet", True),
        ("resnet50", "resnet", False),
        ("resnet50", "eps", True),
        ("resnet50", "posthoc", False),
    ]


# ---------------------------------------------------------------------------------------------------------
# Runs (run-one, 1 rank): the parent writes its row, the child reads it from the same results directory.

PARENT = {**SMALL, "zero_init_residual": True, "epochs": 3, "epsilon": 0.5}  # discards 8 of 16 blocks


def run_ok(tmp_path, **overrides) -> dict:
    proc = run_one(tmp_path, write_config(tmp_path, **{**PARENT, **overrides}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = RunSpec.from_dict({**PARENT, **overrides, "launcher": "local"})
    return {r["run_id"]: r for r in read_runs(tmp_path / "results", "t").to_pylist()}[spec.run_id]


def test_children_copy_their_parents_discards(tmp_path):
    parent = run_ok(tmp_path, variant="eps")
    assert parent["status"] == "ok" and 0 < parent["blocks_discarded"] < 16, parent["blocks_removed"]
    assert len(parent["blocks_removed"]) == parent["blocks_discarded"]

    scratch = run_ok(tmp_path, variant="scratch")
    assert scratch["parent_run_id"] == parent["run_id"] and scratch["side_head"] is False
    for column in ("params_active", "params_total", "blocks_discarded", "blocks_removed", "flops_per_image"):
        assert scratch[column] == parent[column], column
    assert scratch["blocks_discarded_per_stage"] == parent["blocks_discarded_per_stage"]
    # It trained the pruned network itself: nothing was pruned after training, no side head was trained.
    assert scratch["params_train"] == scratch["params_active"]
    assert scratch["flops_per_image_unpruned"] == scratch["flops_per_image"]
    assert scratch["prune_logit_max_abs_diff"] == 0 and scratch["top1_gated"] == scratch["top1"]

    posthoc = run_ok(tmp_path, variant="posthoc", purge_blocks="match", finetune_epochs=1)
    assert posthoc["parent_run_id"] == parent["run_id"]
    # Outside a grid nothing hands it a trained network: it trains its own, and times it.
    assert posthoc["purged_from_run_id"] is None and posthoc["images_per_s"] > 0
    assert posthoc["blocks_discarded"] == parent["blocks_discarded"]
    assert posthoc["params_total"] == parent["params_total"]
    curves = {
        c["epoch"]: c
        for c in read_curves(tmp_path / "results", "t").to_pylist()
        if c["run_id"] == posthoc["run_id"]
    }
    # The fine-tune is its own short schedule: it starts below a tenth of the training's peak, not at it.
    peak = max(c["lr"] for e, c in curves.items() if e < 3)
    assert curves[3]["blocks_active"] == 16 - parent["blocks_discarded"]
    assert curves[3]["lr"] < 0.1 * peak


def test_a_plain_resnet_with_the_side_head_trains_it(tmp_path):
    plain = run_ok(tmp_path, variant="resnet", epsilon=None)
    side = run_ok(tmp_path, variant="resnet", epsilon=None, side_head=True)
    assert (plain["side_head"], side["side_head"]) == (False, True)
    assert side["params_train"] > side["params_total"] == plain["params_total"] == plain["params_train"]
    assert side["params_active"] == plain["params_active"]  # the head is never deployed


def test_a_child_of_a_parent_that_did_not_finish_ok_writes_a_failed_row_saying_so(tmp_path):
    child = {**PARENT, "variant": "scratch"}
    config = write_config(tmp_path, **child)
    proc = run_one(tmp_path, config)
    assert proc.returncode == 1
    row = read_runs(tmp_path / "results", "t").to_pylist()[0]
    parent = RunSpec.from_dict({**child, "launcher": "local"}).parent
    assert row["status"] == "failed" and row["parent_run_id"] == parent.run_id
    assert f"its parent {parent.run_id}" in row["error"] and "has no row" in row["error"]

    now = ok_row(parent)["started_at"]
    failed = failure_row(parent, error="RuntimeError: boom", restarts=0, started=now, ended=now)
    write_run(tmp_path / "results", failed, [])
    assert run_one(tmp_path, config).returncode == 1
    row = {r["run_id"]: r for r in read_runs(tmp_path / "results", "t").to_pylist()}[row["run_id"]]
    assert row["error"] == (
        f"its parent {parent.run_id} (eps, ε = 0.5, repeat 0) finished 'failed': RuntimeError: boom"
    )


def test_the_lr_restarts_can_be_turned_off(tmp_path):
    # ε = 10 switches every zero-initialised block off once the warm-up ends: the discard count rises at
    # epoch 1, which restarts the schedule unless turned off.
    def lrs(row):
        curves = read_curves(tmp_path / "results", "t").to_pylist()
        return [c["lr"] for c in sorted(curves, key=lambda c: c["epoch"]) if c["run_id"] == row["run_id"]]

    on = run_ok(tmp_path, variant="eps", epsilon=10.0, epochs=4)
    off = run_ok(tmp_path, variant="eps", epsilon=10.0, epochs=4, lr_reset_on_discard=False)
    assert (on["lr_reset_on_discard"], off["lr_reset_on_discard"]) == (True, False)
    assert on["blocks_discarded"] == off["blocks_discarded"] == 16
    assert lrs(on)[:2] == lrs(off)[:2]
    # On: a cosine over the last 2 epochs from the peak (half of it after one); off: the first cosine goes on.
    assert lrs(on)[2] > 2 * lrs(off)[2] > 0
    assert lrs(off) == sorted(lrs(off), reverse=True)


# ---------------------------------------------------------------------------------------------------------
# The controls grid on a real local Ray: 15 points, children after their parents, all ok.

TINY = """
name: controls
cluster: {nodes: 1, devices_per_node: 1, cpus_per_worker: 0.5}
concurrency: 2
max_failures: 0
"""


def test_the_controls_grid_runs_all_15_points_ok_on_ray(tmp_path):
    sizes = "width: 4, small_stem: true, image_size: 16, dataset: synthetic, micro_batch: 8, epochs: 2,"
    sizes += " steps_per_epoch: 3, warmup_steps: 1, loader_workers: 0, zero_init_residual: true"
    body = CONTROLS.replace("defaults: {arch: resnet50}", f"defaults: {{arch: resnet50, {sizes}}}")
    grid = grid_of(tmp_path, TINY + body)
    results = tmp_path / "results"
    proc = resnet_bench("run", str(grid), "--results", str(results), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["run_id"]: r for r in read_runs(results, "controls").to_pylist()}
    assert len(rows) == 15 and {r["status"] for r in rows.values()} == {"ok"}
    children = [r for r in rows.values() if r["variant"] in ("scratch", "posthoc")]
    assert len(children) == 6
    for child in children:
        parent = rows[child["parent_run_id"]]
        assert (parent["variant"], parent["repeat"]) == ("eps", child["repeat"])
        assert child["started_at"] >= parent["ended_at"]
        assert child["blocks_discarded"] == parent["blocks_discarded"]
        if child["variant"] == "scratch":
            assert child["params_active"] == parent["params_active"]
            assert child["blocks_removed"] == parent["blocks_removed"]
    assert sum(r["side_head"] for r in rows.values() if r["variant"] == "resnet") == 3
    # Each post-hoc point purged the network its plain ResNet point trained: the same weights (so the same
    # test top-1 before the purge) and the same training curves, none of it trained or timed twice.
    curves = read_curves(results, "controls").to_pylist()
    for child in (r for r in children if r["variant"] == "posthoc"):
        source = rows[child["purged_from_run_id"]]
        assert (source["variant"], source["side_head"], source["repeat"]) == (
            "resnet",
            False,
            child["repeat"],
        )
        assert child["started_at"] >= source["ended_at"]
        assert child["top1_gated"] == source["top1"]
        assert child["images_per_s"] is None and child["timed_steps"] == 0 and source["images_per_s"] > 0
        ours = sorted((c for c in curves if c["run_id"] == child["run_id"]), key=lambda c: c["epoch"])
        theirs = sorted((c for c in curves if c["run_id"] == source["run_id"]), key=lambda c: c["epoch"])
        assert [c["loss"] for c in ours[:2]] == [c["loss"] for c in theirs] and len(ours) == 3
    assert not (results / "controls" / ".checkpoints").exists()  # the kept checkpoints went with the grid
    report = (results / "controls" / "report.md").read_text()
    assert "from scratch" in report and "side head" in report
