"""Grid files: expansion and the one-line error for every mistake (nothing runs, nothing is written)."""

from __future__ import annotations

import json
import textwrap

import pytest

from launchers.grid import load_grid
from suite.errors import UserError

BASE = """
name: t
cluster: {nodes: 2, devices_per_node: 2, cpus_per_worker: 0.5}
defaults: {width: 8, small_stem: true, image_size: 32, dataset: synthetic, micro_batch: 8, epochs: 2}
"""


def grid_file(tmp_path, body: str, base: str = BASE):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(base) + textwrap.dedent(body))
    return path


def test_axes_expand_with_epsilon_only_on_eps_points(tmp_path):
    grid = load_grid(
        grid_file(
            tmp_path,
            """
            repeats: 2
            axes:
              arch: [resnet50, resnet101]
              variant: [resnet, eps]
              epsilon: [0.1, 0.5]
              nodes: [1, 2]
            points:
              - {arch: resnet152, variant: posthoc, purge_blocks: 3}
            """,
        )
    )
    # (2 arch × (1 resnet + 2 ε) × 2 nodes + 1 extra point) × 2 repeats
    assert len(grid.specs) == (2 * 3 * 2 + 1) * 2
    assert len({s.run_id for s in grid.specs}) == len(grid.specs)
    assert all(s.epsilon is None for s in grid.specs if s.variant != "eps")
    assert {s.epsilon for s in grid.specs if s.variant == "eps"} == {0.1, 0.5}
    assert {s.seed for s in grid.specs} == {0, 1} and all(s.grid == "t" for s in grid.specs)
    assert all(s.devices_per_node == 2 and s.launcher == "ray" for s in grid.specs)
    assert grid.concurrency == 1  # 4 slots / the largest point (2 nodes × 2)


def test_global_batch_derives_accumulation(tmp_path):
    grid = load_grid(grid_file(tmp_path, "axes:\n  nodes: [1, 2]\n  global_batch: [64]\n"))
    assert sorted((s.nodes, s.grad_accum, s.global_batch) for s in grid.specs) == [(1, 4, 64), (2, 2, 64)]


def test_shipped_grids_validate():
    from launchers.driver import GRIDS_DIR

    names = {p.stem for p in GRIDS_DIR.glob("*.yaml")}
    assert {"default", "imagenet", "eps-sweep", "study"} <= names
    for path in GRIDS_DIR.glob("*.yaml"):
        grid = load_grid(path)
        assert grid.specs
    default = load_grid(GRIDS_DIR / "default.yaml")
    assert sorted({(s.arch, s.variant) for s in default.specs}) == [
        (a, v) for a in ("resnet101", "resnet152", "resnet50") for v in ("eps", "resnet")
    ]
    assert all(s.world_size == 2 for s in default.specs)
    imagenet = load_grid(GRIDS_DIR / "imagenet.yaml")
    assert {s.nodes for s in imagenet.specs} == {1, 2, 4}
    assert {s.global_batch for s in imagenet.specs} == {1024}


def test_the_study_grid_has_every_control_at_every_depth_three_times():
    from launchers.driver import GRIDS_DIR

    specs = load_grid(GRIDS_DIR / "study.yaml").specs
    arms = {(s.variant, s.side_head, s.purge_blocks) for s in specs}
    assert arms == {("resnet", False, 0), ("resnet", True, 0), ("eps", True, 0), ("scratch", False, 0),
                    ("posthoc", False, "match")}  # fmt: skip
    for arch in ("resnet50", "resnet101", "resnet152"):
        for arm in arms:
            same = [s for s in specs if s.arch == arch and (s.variant, s.side_head, s.purge_blocks) == arm]
            assert sorted(s.repeat for s in same) == [0, 1, 2], (arch, arm)
    assert {s.dataset for s in specs} == {"shapes"} and {s.augment for s in specs} == {"pad_crop"}
    ids = {s.run_id for s in specs}
    assert all(s.parent.run_id in ids for s in specs if s.has_parent)


def _recipe(spec, *skip: str) -> str:
    """A spec's fields but `skip`, as one comparable string: twin grids must differ only there."""
    from dataclasses import asdict

    return json.dumps({k: v for k, v in asdict(spec).items() if k not in skip}, sort_keys=True, default=str)


def test_the_study_budget_grid_is_the_study_s_plain_resnets_trained_longer():
    from launchers.driver import GRIDS_DIR

    def recipe(spec) -> str:  # everything but the budget, the grid, and what tells the runs apart
        return _recipe(spec, "epochs", "grid", "arch", "repeat", "seed")

    study = load_grid(GRIDS_DIR / "study.yaml").specs
    budget = load_grid(GRIDS_DIR / "study-budget.yaml").specs
    plain = [s for s in study if s.variant == "resnet" and not s.side_head]
    assert min(s.epochs for s in budget) > max(s.epochs for s in plain)
    assert len({recipe(s) for s in [*plain, *budget]}) == 1
    assert sorted((s.arch, s.repeat, s.seed) for s in budget) == sorted(
        (s.arch, s.repeat, s.seed) for s in plain
    )


def test_the_study_scratch_budget_grid_is_the_study_s_eps_and_scratch_arms_trained_longer():
    from launchers.driver import GRIDS_DIR

    def recipe(spec) -> str:  # everything but the budget and the grid
        return _recipe(spec, "epochs", "grid")

    study = load_grid(GRIDS_DIR / "study.yaml").specs
    longer = load_grid(GRIDS_DIR / "study-scratch-budget.yaml").specs
    arms = [s for s in study if s.variant in ("eps", "scratch")]
    assert sorted(map(recipe, longer)) == sorted(map(recipe, arms))
    assert min(s.epochs for s in longer) > max(s.epochs for s in arms)
    # Every child's parent is in the grid, so the report pairs them as in the study.
    ids = {s.run_id for s in longer}
    assert all(s.parent.run_id in ids for s in longer if s.variant == "scratch")


def test_the_study_restarts_grid_is_the_study_s_resnets_and_eps_resnets_without_lr_restarts():
    from launchers.driver import GRIDS_DIR

    def recipe(spec) -> str:  # everything but the grid and the switch under test
        return _recipe(spec, "grid", "lr_reset_on_discard")

    study = load_grid(GRIDS_DIR / "study.yaml").specs
    restarts = load_grid(GRIDS_DIR / "study-restarts.yaml").specs
    twins = [s for s in study if s.variant == "eps" or (s.variant == "resnet" and not s.side_head)]
    assert sorted(map(recipe, restarts)) == sorted(map(recipe, twins))
    assert all(s.lr_reset_on_discard for s in twins if s.variant == "eps")
    assert not any(s.lr_reset_on_discard for s in restarts if s.variant == "eps")
    assert {s.variant for s in restarts} == {"resnet", "eps"}


def test_the_imagenet_grid_follows_the_official_eps_resnet_schedule():
    # imagenetEpsilonResnet.py in github.com/yuxwind/epsilonResnet: 110 epochs, lr × 0.1 at epochs 30, 60, 85,
    # 95, no adaptive restart; both variants on it, so the comparison has one budget.
    from launchers.driver import GRIDS_DIR
    from suite.optim import Schedule

    specs = load_grid(GRIDS_DIR / "imagenet.yaml").specs
    assert {s.variant for s in specs} == {"resnet", "eps"}
    recipes = {(s.epochs, s.schedule, s.step_milestones, s.step_gamma, s.lr_warmup_epochs) for s in specs}
    assert len(recipes) == 1, recipes
    assert not any(s.lr_reset_on_discard for s in specs)
    spec, per_epoch = specs[0], 10
    schedule = Schedule(  # as suite/trainer.py builds it
        total_steps=per_epoch * spec.epochs,
        warmup_steps=round(spec.lr_warmup_epochs * per_epoch),
        kind=spec.schedule,
        steps_per_epoch=per_epoch,
        milestones=spec.step_milestones,
        gamma=spec.step_gamma,
    )
    lr = [schedule(step) for step in range(per_epoch * spec.epochs)]
    drops = [step / per_epoch for step in range(1, len(lr)) if lr[step] < lr[step - 1]]
    assert spec.epochs == 110 and drops == [30, 60, 85, 95]
    assert lr[-1] == pytest.approx(1e-4)


# (grid body, fragment the one-line message must contain)
BAD_GRIDS = [
    ("axes: {arch: [resnet50]}\nconcurency: 2\n", "unknown key 'concurency'; did you mean 'concurrency'?"),
    ("axes: {archs: [resnet50]}\n", "axes: unknown key 'archs'; did you mean 'arch'?"),
    ("defaults2: {}\n", "unknown key 'defaults2'"),
    ("axes: {arch: []}\n", "axes.arch is empty"),
    ("axes: {arch: resnet50}\n", "axes.arch must be a list"),
    ("axes: {width: ['8']}\n", "width must be int, got '8'"),
    ("axes: {arch: [resnet18]}\n", "arch 'resnet18' unknown; accepted: resnet50, resnet101, resnet152"),
    ("points: [{variant: resnet, epsilon: 0.1}]\n", "points[0]: epsilon=0.1 given for variant 'resnet'"),
    ("points: [{variant: eps}]\n", "variant 'eps' needs epsilon"),
    ("points: [{variant: eps, epsilon: -1}]\n", "epsilon must be ≥ 0"),
    ("axes: {global_batch: [100]}\n", "global_batch 100 is not a multiple of micro_batch 8 × world size 2"),
    ("axes: {nodes: [3]}\n", "needs 3 node(s) × 2 device(s) but the cluster has 2 × 2"),
    ("points: [{devices_per_node: 4}]\n", "needs 1 node(s) × 4 device(s)"),
    ("points: [{arch: resnet50}, {arch: resnet50}]\n", "duplicates"),
    ("repeats: 0\n", "repeats must be an integer ≥ 1"),
    ("concurrency: two\n", "concurrency must be an integer ≥ 1"),
    ("cluster: {nodes: 0}\n", "cluster.nodes must be an integer ≥ 1"),
    ("cluster: {use_gpu: maybe}\n", "cluster.use_gpu must be true or false"),
    ("cluster: {dashboard: 1}\n", "cluster.dashboard must be true or false, got 1"),
    ("cluster: {gpus: 1}\n", "cluster: unknown key 'gpus'"),
    ("name: ../up\n", "grid name '../up' is not a safe name"),
    ("points: [{micro_batch: 0}]\n", "micro_batch must be ≥ 1"),
    ("points: [{precision: fp8}]\n", "precision 'fp8'; accepted: fp32, bf16, fp16"),
    ("points: [{zero_stage: 3}]\n", "zero_stage 3; accepted: 0, 1, 2"),
    ("points: [{image_size: 4}]\n", "image_size 4 is too small"),
    ("points: [{dataset: imagefolder}]\n", "dataset 'imagefolder' needs data_dir"),
    ("points: [{dataset: cifar}]\n", "dataset 'cifar' unknown"),
    ("points: [{variant: resnet, purge_blocks: 2}]\n", "apply to variant 'posthoc' only"),
    ("points: [{variant: posthoc, purge_blocks: 99}]\n", "purge_blocks 99 > 16 blocks of resnet50"),
    ("axes: {arch: [resnet50]}\naxes: {arch: [resnet101]}\n", "duplicate key 'axes'"),
    ("points: [{grid: x}]\n", "points[0]: grid is set by the grid itself"),
    ("axes: {repeat: [0, 1]}\n", "axes: repeat is set by the grid itself"),
]


@pytest.mark.parametrize(("body", "fragment"), BAD_GRIDS)
def test_bad_grid_is_one_line_error(tmp_path, body, fragment):
    # A body that sets `name` or `cluster` replaces the base's line instead of repeating the key.
    base = "\n".join(line for line in BASE.splitlines() if not line.startswith(body.split(":")[0] + ":"))
    path = grid_file(tmp_path, body, base=base + "\n")
    with pytest.raises(UserError) as info:
        load_grid(path)
    message = str(info.value)
    assert "\n" not in message
    if fragment:
        assert fragment in message, message
    assert list(tmp_path.iterdir()) == [path]  # nothing written


def test_yaml_mistakes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\naxes: {arch: [resnet50\n")
    with pytest.raises(UserError, match=r"line .*YAML error"):
        load_grid(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: x\nname: y\n")
    with pytest.raises(UserError, match="duplicate key 'name'"):
        load_grid(dup)
    with pytest.raises(UserError, match="is a directory"):
        load_grid(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_grid(tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_grid(scalar)


def test_the_driver_checks_a_data_set_once_for_all_its_repeats(tmp_path, monkeypatch):
    import launchers.driver
    from suite.data import imagefolder
    from tests.data_trees import make_tree

    root = tmp_path / "data"
    make_tree(root, {"train": {"a": 4, "b": 4}, "val": {"a": 2, "b": 2}})
    listed = []
    real = imagefolder.list_dir
    monkeypatch.setattr(imagefolder, "list_dir", lambda path, **kw: listed.append(path) or real(path, **kw))
    grid = load_grid(
        grid_file(
            tmp_path,
            "repeats: 3\naxes: {arch: [resnet50, resnet101]}\n",
            base=BASE.replace("dataset: synthetic", f"dataset: imagefolder, data_dir: {root}"),
        )
    )
    infos = launchers.driver.preflight(grid)
    assert len(infos) == 6 and len({id(i) for i in infos.values()}) == 1
    assert listed.count(root / "train") == 1
