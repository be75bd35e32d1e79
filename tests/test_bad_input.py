"""The bad-input catalogue: every way a user can hand the CLI something wrong, and what they get back.

The contract (README, suite/errors.py): exit code 2, one line on stderr naming the culprit and what is
accepted, and nothing written — or, where the run itself is at fault rather than its input, a `failed` row.

Each case is one row of `CASES`, run through the CLI's own entry point (`resnet_bench.main`) in a forked child
process: real exit status, real stdout/stderr file descriptors, its own working directory, and none of the
10–60 s a fresh interpreter spends importing torch on this shared machine. One case per category also goes
through a real `python -m resnet_bench` subprocess (`test_each_category_through_a_real_subprocess`), so the fork is
never the only witness. Cases that show a bug in suite/ or launchers/ are `xfail(strict=True)` with the fix in
the reason: they flip to a failure (to be un-marked) once the fix lands.

Root: tests run as root here, and root reads mode-000 files and writes into mode-555 directories
(CAP_DAC_OVERRIDE). The permission cases therefore drop CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH in the child
(what an ordinary user sees), and the read-only results case also runs on a real read-only bind mount in a
private mount namespace (`unshare --mount`), which stops root too.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

# Imported here, once, so a forked child runs the CLI without paying for the imports again.
import launchers.driver  # noqa: F401
import suite.run  # noqa: F401
from resnet_bench import main
from suite.errors import UserError
from suite.results import read_runs
from suite.schema import SCHEMA_VERSION
from suite.spec import RunSpec
from tests.data_trees import drop_dac_capabilities

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------
# Running the CLI


@dataclass
class Outcome:
    code: int  # exit status; -N when killed by signal N
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli(
    argv: list[str],
    *,
    cwd: Path,
    io_dir: Path,
    env: dict[str, str] | None = None,
    ordinary_user: bool = False,
    timeout: float = 300,
) -> Outcome:
    """`resnet-bench ARGV` in a forked child: `resnet_bench.main(argv)`, exit status as a process would give it
    (an uncaught exception prints its traceback and exits 1, as the interpreter does)."""
    io_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = io_dir / "stdout", io_dir / "stderr"
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 70
        try:
            os.chdir(cwd)
            for fd, path in ((1, out_path), (2, err_path)):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
            os.environ.update(env or {})
            if ordinary_user and os.geteuid() == 0:
                drop_dac_capabilities()
            try:
                code = main(list(argv))
            except SystemExit as e:  # argparse
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"resnet-bench {' '.join(argv)} did not finish within {timeout} s")
        time.sleep(0.05)
    return Outcome(os.waitstatus_to_exitcode(status), out_path.read_text(), err_path.read_text())


def cli_subprocess(argv: list[str], *, cwd: Path, prefix: tuple[str, ...] = (), timeout: float = 300):
    """`python -m resnet_bench ARGV` as a real process (optionally under a wrapper such as `unshare`)."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "resnet_bench", *argv],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---------------------------------------------------------------------------------------------------------
# Building inputs


BASE_GRID = {
    "name": "g",
    "cluster": {"nodes": 2, "devices_per_node": 2, "cpus_per_worker": 0.5},
    "defaults": {
        "width": 4,
        "small_stem": True,
        "image_size": 16,
        "dataset": "synthetic",
        "micro_batch": 8,
        "epochs": 1,
        "steps_per_epoch": 4,
        "loader_workers": 0,
    },
}
BASE_RUN = {**BASE_GRID["defaults"], "arch": "resnet50", "grid": "g"}


def grid_text(body: str, *, base: dict | None = None) -> str:
    """The base grid with the top-level keys `body` sets replaced by `body`'s lines."""
    base = BASE_GRID if base is None else base
    body = textwrap.dedent(body)
    given = {line.split(":")[0] for line in body.splitlines() if line and not line[0].isspace()}
    kept = {k: v for k, v in base.items() if k not in given}
    return (yaml.safe_dump(kept, sort_keys=False) if kept else "") + body


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def image_tree(root: Path, counts: dict[str, dict[str, int]]) -> Path:
    """train/<class>/*.png and val/<class>/*.png, tiny solid images (PIL)."""
    from PIL import Image

    value = 10
    for split, classes in counts.items():
        for name, n in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (12, 10), (value % 256, 255 - value % 256, 77)).save(folder / f"{i:03d}.png")
                value += 3
    return root


GARBAGE_JPEG = b"\xff\xd8\xff\xe0 this is not a JPEG at all" * 8


def schema_99(results: Path) -> Path:
    """A run file of another schema version, where a grid's runs live."""
    path = results / "g" / "runs" / "old.parquet"
    path.parent.mkdir(parents=True)
    table = pa.table({"run_id": ["old"]}).replace_schema_metadata({"resnet_bench_schema_version": "99"})
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# The catalogue


@dataclass
class Case:
    id: str
    category: str  # grid | dataset | results | slurm | report | run-one
    setup: Callable[[Path], list[str]]  # builds the inputs in a workspace, returns the CLI arguments
    culprit: Callable[[Path], str]  # a fragment of the message that names what is wrong
    accepted: str | None = None  # a fragment that says what is accepted, where the message has one
    ordinary_user: bool = False
    bug: str | None = None  # xfail(strict) reason: a bug in suite/ or launchers/, with the fix
    marks: list = field(default_factory=list)


def run_grid(body: str, *, extra: tuple[str, ...] = ("--dry-run",)) -> Callable[[Path], list[str]]:
    """`run GRID --dry-run --results W/results`: --dry-run validates everything the real run validates
    (grid, results directory, data, finished rows) and can never start Ray if a case were wrongly accepted."""

    def setup(w: Path) -> list[str]:
        grid = write(w / "grid.yaml", grid_text(body))
        return ["run", str(grid), "--results", str(w / "results"), *extra]

    return setup


def run_grid_with(make: Callable[[Path], dict], *, results: Callable[[Path], Path] | None = None):
    """A grid whose defaults come from `make(workspace)` (e.g. a data_dir it built)."""

    def setup(w: Path) -> list[str]:
        defaults = {**BASE_GRID["defaults"], **make(w)}
        grid = write(w / "grid.yaml", yaml.safe_dump({**BASE_GRID, "defaults": defaults}, sort_keys=False))
        out = results(w) if results else w / "results"
        return ["run", str(grid), "--results", str(out), "--dry-run"]

    return setup


def run_one(make: Callable[[Path], dict], *args: str, results: Callable[[Path], Path] | None = None):
    def setup(w: Path) -> list[str]:
        config = write(w / "config.yaml", yaml.safe_dump({**BASE_RUN, **make(w)}, sort_keys=False))
        out = results(w) if results else w / "results"
        return ["run-one", str(config), "--results", str(out), *args]

    return setup


def imagefolder(counts, *, corrupt: tuple[str, ...] = ()) -> Callable[[Path], dict]:
    def make(w: Path) -> dict:
        root = image_tree(w / "data", counts)
        for rel in corrupt:
            write(root / rel, GARBAGE_JPEG)
        return {"dataset": "imagefolder", "data_dir": str(root)}

    return make


def locked(counts, rel: str, mode: int = 0) -> Callable[[Path], dict]:
    def make(w: Path) -> dict:
        root = image_tree(w / "data", counts)
        (root / rel).chmod(mode)
        return {"dataset": "imagefolder", "data_dir": str(root)}

    return make


TWO = {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}}
LAYOUT = "accepted: a directory holding train/<class>/"

CASES: list[Case] = [
    # --- grid files -------------------------------------------------------------------------------------
    Case("unknown top-level key", "grid", run_grid("concurency: 2\n"),
         lambda w: "unknown key 'concurency'", "did you mean 'concurrency'?"),
    Case("unknown spec key in axes", "grid", run_grid("axes: {archs: [resnet50]}\n"),
         lambda w: "axes: unknown key 'archs'", "did you mean 'arch'?"),
    Case("unknown cluster key", "grid", run_grid("cluster: {gpus: 1}\n"),
         lambda w: "cluster: unknown key 'gpus'", "accepted: nodes, devices_per_node"),
    Case("wrong type: string for an int", "grid", run_grid("axes: {width: ['8']}\n"),
         lambda w: "width must be int, got '8'"),
    Case("wrong type: word for concurrency", "grid", run_grid("concurrency: two\n"),
         lambda w: "concurrency must be an integer ≥ 1, got 'two'"),
    Case("wrong type: use_gpu", "grid", run_grid("cluster: {use_gpu: maybe}\n"),
         lambda w: "cluster.use_gpu must be true or false, got 'maybe'"),
    Case("empty axis", "grid", run_grid("axes: {arch: []}\n"),
         lambda w: "axes.arch is empty", "give at least one value"),
    Case("axis that is not a list", "grid", run_grid("axes: {arch: resnet50}\n"),
         lambda w: "axes.arch must be a list"),
    Case("impossible batch arithmetic", "grid", run_grid("axes: {global_batch: [100]}\n"),
         lambda w: "global_batch 100 is not a multiple of micro_batch 8 × world size 2",
         "accepted: global_batch = micro_batch × grad_accum × nodes × devices_per_node"),
    Case("ε on a non-ε variant", "grid", run_grid("points: [{variant: resnet, epsilon: 0.1}]\n"),
         lambda w: "epsilon=0.1 given for variant 'resnet'", "only variant 'eps' has an ε gate"),
    Case("ε variant without ε", "grid", run_grid("points: [{variant: eps}]\n"),
         lambda w: "variant 'eps' needs epsilon", "a float ≥ 0"),
    Case("ε warm-up as long as the run", "grid",
         run_grid("points: [{variant: eps, epsilon: 0.5, epochs: 3, eps_warmup_epochs: 3}]\n"),
         lambda w: "eps_warmup_epochs=3 ≥ epochs=3: the ε gate would never act",
         "accepted: eps_warmup_epochs < epochs"),
    Case("gate_sync on a variant without a gate", "grid",
         run_grid("points: [{variant: resnet, gate_sync: local}]\n"),
         lambda w: "gate_sync 'local' given for variant 'resnet', which has no ε gate",
         "accepted: variant 'eps'"),
    Case("unknown block", "grid", run_grid("points: [{block: v2}]\n"),
         lambda w: "block 'v2' unknown", "accepted: v1.5, preact"),
    Case("stochastic depth under ZeRO", "grid", run_grid("points: [{variant: stochdepth, zero_stage: 2}]\n"),
         lambda w: "variant 'stochdepth' with zero_stage 2", "accepted: zero_stage 0"),
    Case("survival_last on a variant without stochastic depth", "grid",
         run_grid("points: [{variant: resnet, survival_last: 0.8}]\n"),
         lambda w: "survival_last/depth_schedule given for variant 'resnet'", "accepted: variant 'stochdepth'"),
    Case("posthoc_of on a variant that purges nothing", "grid",
         run_grid("points: [{variant: plain, posthoc_of: plain}]\n"),
         lambda w: "posthoc_of 'plain' given for variant 'plain'", "accepted: variant 'posthoc'"),
    Case("unknown gate_sync", "grid", run_grid("points: [{variant: eps, epsilon: 0.5, epochs: 2, gate_sync: rank}]\n"),
         lambda w: "gate_sync 'rank'", "accepted: step, local"),
    Case("infinite learning rate", "grid", run_grid("points: [{lr: .inf}]\n"),
         lambda w: "lr=inf is not a finite number", "accepted: a finite number"),
    Case("NaN ε", "grid", run_grid("points: [{variant: eps, epsilon: .nan, epochs: 2}]\n"),
         lambda w: "epsilon=nan is not a finite number", "accepted: a finite number or null"),
    Case("unknown architecture", "grid", run_grid("axes: {arch: [resnet18]}\n"),
         lambda w: "arch 'resnet18' unknown", "accepted: resnet50, resnet101, resnet152"),
    Case("unsupported precision", "grid", run_grid("points: [{precision: fp8}]\n"),
         lambda w: "precision 'fp8'", "accepted: fp32, bf16, fp16"),
    Case("duplicate points", "grid", run_grid("points: [{arch: resnet50}, {arch: resnet50}]\n"),
         lambda w: "points[1]: duplicates"),
    Case("duplicate key", "grid", run_grid("axes: {arch: [resnet50]}\naxes: {arch: [resnet101]}\n"),
         lambda w: "duplicate key 'axes'"),
    Case("unsafe grid name", "grid", run_grid("name: ../up\n"),
         lambda w: "grid name '../up' is not a safe name", "accepted: letters, digits"),
    Case("YAML syntax error", "grid", run_grid("axes: {arch: [resnet50\n"),
         lambda w: f"grid file '{w / 'grid.yaml'}' line", None),
    Case("grid that is a directory", "grid", lambda w: ["run", str(w), "--dry-run", "--results", str(w / "r")],
         lambda w: f"grid file '{w}' is a directory", "accepted: a YAML file"),
    Case("grid that is not a mapping", "grid", lambda w: ["run", str(write(w / "g.yaml", "- a\n- b\n")),
                                                           "--dry-run", "--results", str(w / "r")],
         lambda w: "must be a YAML mapping of keys to values"),
    Case("grid that is not text", "grid", lambda w: ["run", str(write(w / "g.yaml", b"\xff\xfe\x00name")),
                                                      "--dry-run", "--results", str(w / "r")],
         lambda w: f"grid file '{w / 'g.yaml'}'"),
    Case("nodes as a string with global_batch", "grid",
         run_grid("axes: {nodes: ['2'], global_batch: [64]}\n"),
         lambda w: "nodes"),
    Case("devices_per_node 0 with global_batch", "grid",
         run_grid("points: [{devices_per_node: 0, global_batch: 64}]\n"),
         lambda w: "devices_per_node"),
    Case("micro_batch 0 with global_batch", "grid",
         run_grid("points: [{micro_batch: 0, global_batch: 64}]\n"),
         lambda w: "micro_batch"),
    Case("seed that is not a number", "grid", run_grid("points: [{seed: x}]\n"),
         lambda w: "seed"),
    Case("seed that is a boolean", "grid", run_grid("points: [{seed: true}]\n"),
         lambda w: "seed"),
    # --- datasets -----------------------------------------------------------------------------------------
    Case("data_dir missing", "dataset",
         run_grid_with(lambda w: {"dataset": "imagefolder", "data_dir": str(w / "nowhere")}),
         lambda w: f"data directory {w / 'nowhere'} does not exist", LAYOUT),
    Case("data_dir empty", "dataset",
         run_one(lambda w: {"dataset": "imagefolder", "data_dir": str((w / "empty").mkdir() or w / "empty")}),
         lambda w: f"{w / 'empty'} has no train/ directory (it is empty)", LAYOUT),
    Case("data_dir is a file", "dataset",
         run_one(lambda w: {"dataset": "imagefolder", "data_dir": str(write(w / "data.tar", "x"))}),
         lambda w: f"data directory {w / 'data.tar'} is not a directory", LAYOUT),
    Case("imagefolder without data_dir", "dataset", run_one(lambda w: {"dataset": "imagefolder"}),
         lambda w: "dataset 'imagefolder' needs data_dir", "a directory with train/ and val/"),
    Case("unknown dataset", "dataset", run_one(lambda w: {"dataset": "cifar"}),
         lambda w: "dataset 'cifar' unknown", "accepted: synthetic, imagefolder, shapes, shards"),
    Case("class with no images", "dataset",
         run_one(imagefolder({"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 0}})),
         lambda w: f"class folder {w / 'data' / 'val' / 'b'} holds no images", LAYOUT),
    Case("class only in train", "dataset",
         run_grid_with(imagefolder({"train": {"a": 2, "b": 2}, "val": {"a": 1}})),
         lambda w: f"class folder {w / 'data' / 'train' / 'b'} has no counterpart", LAYOUT),
    Case("many corrupt JPEGs", "dataset",
         run_one(imagefolder(TWO, corrupt=("train/a/bad1.jpg", "val/b/bad2.jpg"))),
         lambda w: f"2 of 8 checked images under {w / 'data'} do not decode",
         "accepted: at most 1% corrupt images"),
    Case("class whose only image is corrupt", "dataset",
         run_grid_with(imagefolder({"train": {"a": 2, "b": 0}, "val": {"a": 1, "b": 1}},
                                   corrupt=("train/b/only.jpg",))),
         lambda w: f"no checked image of class folder {w / 'data' / 'train' / 'b'} decodes",
         "accepted: JPEG or PNG images"),
    Case("num_classes that does not fit the data", "dataset",
         run_one(lambda w: {**imagefolder(TWO)(w), "num_classes": 3}),
         lambda w: f"num_classes=3 but {w / 'data'} has 2 class folders", "accepted: null or 2"),
    Case("unreadable image", "dataset", run_one(locked(TWO, "train/a/000.png")),
         lambda w: f"cannot read {w / 'data' / 'train' / 'a' / '000.png'}: permission denied",
         "accepted: files this user can read", ordinary_user=True),
    Case("unreadable class folder", "dataset", run_grid_with(locked(TWO, "val/b")),
         lambda w: f"cannot list {w / 'data' / 'val' / 'b'}: permission denied",
         "accepted: directories this user can read and enter", ordinary_user=True),
    # --- results directories ----------------------------------------------------------------------------
    Case("results is a file", "results",
         lambda w: [*run_grid("")(w)[:2], "--results", str(write(w / "results", "x")), "--dry-run"],
         lambda w: f"results path '{w / 'results'}' is a file", "accepted: a directory"),
    Case("results under a file", "results",
         run_one(lambda w: {}, results=lambda w: write(w / "file", "x") / "sub" / "results"),
         lambda w: f"results path '{w / 'file'}' is a file", "accepted: a directory"),
    Case("results directory not writable", "results",
         run_grid_with(lambda w: {}, results=lambda w: (w / "ro").mkdir(mode=0o555) or w / "ro"),
         lambda w: f"results directory '{w / 'ro'}' is not writable", ordinary_user=True),
    Case("rows of another schema version (run)", "results",
         lambda w: schema_99(w / "results") and run_grid("")(w),
         lambda w: f"{w / 'results' / 'g' / 'runs' / 'old.parquet'} has result schema version 99",
         f"this resnet-bench reads version {SCHEMA_VERSION}"),
    Case("a results file that is not Parquet (run)", "results",
         lambda w: write(w / "results" / "g" / "runs" / "x.parquet", "garbage") and run_grid("")(w),
         lambda w: str(w / "results" / "g" / "runs" / "x.parquet")),
    # --- report -------------------------------------------------------------------------------------------
    Case("report: rows of another schema version", "report",
         lambda w: schema_99(w / "results") and ["report", str(w / "results")],
         lambda w: "old.parquet has result schema version 99", f"this resnet-bench reads version {SCHEMA_VERSION}"),
    Case("report: results directory missing", "report", lambda w: ["report", str(w / "nothing")],
         lambda w: f"results directory '{w / 'nothing'}' does not exist", "accepted: a directory of grids"),
    Case("report: unknown grid", "report",
         lambda w: schema_99(w / "results") and ["report", str(w / "results"), "--grid", "other"],
         lambda w: "grid 'other' not found under", "available: g"),
    Case("report: a results file that is not Parquet", "report",
         lambda w: write(w / "results" / "g" / "runs" / "x.parquet", "garbage") and ["report", str(w / "results")],
         lambda w: str(w / "results" / "g" / "runs" / "x.parquet")),
    # --- Slurm-facing: what an sbatch script hands to `resnet-bench run` --------------------------------
    Case("missing grid file", "slurm", lambda w: ["run", "missing.yaml", "--results", str(w / "results")],
         lambda w: "grid file 'missing.yaml' does not exist"),
    Case("more nodes than the cluster", "slurm", run_grid("points: [{nodes: 3}]\n"),
         lambda w: "needs 3 node(s) × 2 device(s) but the cluster has 2 × 2", "accepted: nodes ≤ cluster.nodes"),
    Case("more devices per node than the cluster", "slurm", run_grid("points: [{devices_per_node: 4}]\n"),
         lambda w: "needs 1 node(s) × 4 device(s) but the cluster has 2 × 2",
         "devices_per_node ≤ cluster.devices_per_node"),
    Case("cluster of zero nodes", "slurm", run_grid("cluster: {nodes: 0}\n"),
         lambda w: "cluster.nodes must be an integer ≥ 1, got 0"),
    # --- run-one's own arguments --------------------------------------------------------------------------
    Case("run-one: unknown key", "run-one", run_one(lambda w: {"archh": "resnet50"}),
         lambda w: "unknown key 'archh'", "did you mean 'arch'?"),
    Case("run-one: --set without '='", "run-one", run_one(lambda w: {}, "--set", "width"),
         lambda w: "--set 'width': expected key=value"),
    Case("run-one: --set of a wrong type", "run-one", run_one(lambda w: {}, "--set", "micro_batch=eight"),
         lambda w: "micro_batch must be int, got 'eight'"),
    Case("run-one: missing config", "run-one", lambda w: ["run-one", str(w / "none.yaml")],
         lambda w: f"config file '{w / 'none.yaml'}' does not exist"),
]  # fmt: skip


def _params() -> list:
    params = []
    for case in CASES:
        marks = list(case.marks)
        if case.bug:
            marks.append(pytest.mark.xfail(strict=True, reason=case.bug))
        params.append(pytest.param(case, id=f"{case.category}: {case.id}", marks=marks))
    return params


def check_refused(outcome: Outcome, case: Case, w: Path) -> None:
    assert outcome.code == 2, f"exit {outcome.code}; stderr:\n{outcome.err[-3000:]}"
    assert len(outcome.lines) == 1, f"expected one line on stderr, got:\n{outcome.err[-3000:]}"
    line = outcome.lines[0]
    assert line.startswith("resnet-bench ") and ": error: " in line, line
    assert case.culprit(w) in line, line
    if case.accepted:
        assert case.accepted in line, line


def test_the_catalogue_covers_every_category():
    assert len(CASES) >= 30
    categories = {c.category for c in CASES}
    assert {"grid", "dataset", "results", "report", "slurm"} <= categories
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_refused_with_one_line_and_nothing_written(case: Case, tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    argv = case.setup(w)
    before = snapshot(w)
    try:
        outcome = cli(argv, cwd=w, io_dir=tmp_path / "io", ordinary_user=case.ordinary_user)
    finally:
        for p in w.rglob("*"):  # undo the permission cases, so pytest can clean up
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
    check_refused(outcome, case, w)
    assert snapshot(w) == before, f"written: {sorted(snapshot(w) - before)}"


# ---------------------------------------------------------------------------------------------------------
# The same rules on RunSpec itself (what run-one, a grid and a Ray worker all build)

EPS = {"variant": "eps", "epsilon": 0.1, "epochs": 2}  # a valid ε spec: gate on from the second epoch
FLOAT_FIELDS = [f.name for f in fields(RunSpec) if str(f.type).startswith("float")]


def refused(**values) -> str:
    with pytest.raises(UserError) as e:
        RunSpec(**values)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_an_eps_warmup_as_long_as_the_run_is_refused():
    message = refused(variant="eps", epsilon=0.1, epochs=10, eps_warmup_epochs=10)
    assert message == (
        "eps_warmup_epochs=10 ≥ epochs=10: the ε gate would never act; accepted: eps_warmup_epochs < epochs"
    )
    assert "eps_warmup_epochs=1 ≥ epochs=1" in refused(variant="eps", epsilon=0.1, eps_warmup_epochs=1)
    # Unset, the warm-up is 1 epoch, or none for a 1-epoch run: the bare defaults are a valid ε spec.
    assert RunSpec(variant="eps", epsilon=0.1).eps_warmup_epochs == 0
    assert RunSpec(variant="eps", epsilon=0.1, epochs=2).eps_warmup_epochs == 1
    assert "eps_warmup_epochs=5 ≥ epochs=3" in refused(
        variant="eps", epsilon=0.1, epochs=3, eps_warmup_epochs=5
    )
    RunSpec(variant="eps", epsilon=0.1, epochs=10, eps_warmup_epochs=9)
    RunSpec(variant="eps", epsilon=0.1, eps_warmup_epochs=0)
    RunSpec(epochs=1, eps_warmup_epochs=1)  # no gate to act: a plain ResNet's warm-up is moot


def test_every_float_field_is_checked_for_finiteness():
    # Generic over the dataclass, so a new float field is covered without a new line in the validator.
    assert {"lr", "momentum", "weight_decay", "label_smoothing", "lr_warmup_epochs", "step_gamma", "epsilon",
            "side_loss_weight", "min_crop_scale", "target_top1"} <= set(FLOAT_FIELDS)  # fmt: skip


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize(
    "value", [float("inf"), float("-inf"), float("nan"), 10**400], ids=["inf", "-inf", "nan", "10**400"]
)
def test_a_non_finite_float_field_is_refused(name, value):
    message = refused(**{**EPS, name: value})
    assert message.startswith(f"{name}={value!r} is not a finite number; accepted: a finite number"), message


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr_warmup_epochs": -0.5}, "lr_warmup_epochs must be ≥ 0, got -0.5"),
        ({"step_gamma": 0.0}, "step_gamma must be in (0, 1], got 0.0"),
        ({"step_gamma": 1.5}, "step_gamma must be in (0, 1], got 1.5"),
        ({"side_loss_weight": -0.1}, "side_loss_weight must be ≥ 0, got -0.1"),
    ],
)
def test_out_of_range_schedule_and_loss_fields_are_refused(values, message):
    assert refused(**EPS, **values) == message
    RunSpec(**EPS, lr_warmup_epochs=0.0, step_gamma=1.0, side_loss_weight=0.0)  # the edges are accepted


def test_a_run_whose_batch_the_data_cannot_fill_is_a_failed_row(tmp_path):
    # Not bad input in the validator's sense (it depends on the data), so it is a `failed` row: exit 1, the
    # error names the micro-batch, and the run is on record.
    w = tmp_path / "w"
    w.mkdir()
    argv = run_one(lambda w: {"micro_batch": 2048})(w)
    outcome = cli(argv, cwd=w, io_dir=tmp_path / "io")
    assert outcome.code == 1, outcome.err[-3000:]
    said = [line for line in outcome.lines if line.startswith("resnet-bench run-one: run ")]
    assert said and " failed: " in said[0] and "no full micro-batch of 2048" in said[0], outcome.err[-3000:]
    (row,) = read_runs(w / "results", "g").to_pylist()
    assert row["status"] == "failed" and "no full micro-batch of 2048 per rank" in row["error"]


def test_an_epsilon_axis_is_never_silently_dropped(tmp_path):
    body = grid_text(
        "axes: {epsilon: [0.2, 0.5]}\n",
        # 2 epochs: the ε gate acts after its 1-epoch warm-up (a 1-epoch ε run is refused).
        base={
            **BASE_GRID,
            "defaults": {**BASE_GRID["defaults"], "variant": "eps", "epsilon": 0.1, "epochs": 2},
        },
    )
    grid = write(tmp_path / "grid.yaml", body)
    outcome = cli(
        ["run", str(grid), "--dry-run", "--results", str(tmp_path / "r")],
        cwd=tmp_path,
        io_dir=tmp_path / "io",
    )
    # Either refused (exit 2, naming epsilon) or expanded to the two ε values the axis asks for.
    if outcome.code == 2:
        assert "epsilon" in outcome.err
    else:
        assert outcome.code == 0, outcome.err[-3000:]
        assert "2 points" in outcome.out, outcome.out


def make_few_corrupt(w: Path) -> dict:
    # 1 corrupt file among 141 checked: under the 1 % the preflight tolerates, so it is skipped.
    root = image_tree(w / "data", {"train": {"a": 60, "b": 60}, "val": {"a": 10, "b": 10}})
    write(root / "train" / "b" / "zz_bad.jpg", GARBAGE_JPEG)
    return {"dataset": "imagefolder", "data_dir": str(root), "micro_batch": 8, "steps_per_epoch": 1}


@pytest.mark.slow
def test_a_few_corrupt_images_are_skipped_and_counted(tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    outcome = cli(run_one(make_few_corrupt)(w), cwd=w, io_dir=tmp_path / "io")
    assert outcome.code == 0, outcome.err[-3000:]  # skipped: the run goes on
    (row,) = read_runs(w / "results", "g").to_pylist()
    assert row["status"] == "ok"
    assert row["images_skipped"] == 1


# One case per category as a real `python -m resnet_bench` process (no fork), including the read-only results
# directory on a real read-only mount, which stops root as well.
SUBPROCESS_CASES = ["YAML syntax error", "class with no images", "missing grid file", "report: rows of another schema version"]  # fmt: skip


def _readonly_mount_prefix(target: Path) -> tuple[str, ...]:
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(target))


def _can_mount_readonly(tmp: Path) -> str | None:
    if not shutil.which("unshare"):
        return "no unshare(1)"
    probe = tmp / "probe"
    probe.mkdir()
    proc = subprocess.run(
        [
            *_readonly_mount_prefix(probe),
            "sh",
            "-c",
            'touch "$0/x" 2>/dev/null; test -e "$0/x" && echo writable; exit 0',
            str(probe),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    probe.rmdir() if not any(probe.iterdir()) else shutil.rmtree(probe)
    if proc.returncode != 0:
        return f"cannot make a read-only bind mount here: {proc.stderr.strip()[:200]}"
    if "writable" in proc.stdout:
        return "the bind mount did not come out read-only"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("name", [*SUBPROCESS_CASES, "results directory on a read-only mount"])
def test_each_category_through_a_real_subprocess(name, tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    prefix: tuple[str, ...] = ()
    if name == "results directory on a read-only mount":
        reason = _can_mount_readonly(tmp_path)
        if reason:
            pytest.skip(reason)
        (w / "ro").mkdir()
        case = Case(name, "results", run_grid_with(lambda w: {}, results=lambda w: w / "ro"),
                    lambda w: f"results directory '{w / 'ro'}' is not writable")  # fmt: skip
        prefix = _readonly_mount_prefix(w / "ro")
    else:
        case = next(c for c in CASES if c.id == name)
    argv = case.setup(w)
    before = snapshot(w)
    outcome = cli_subprocess(argv, cwd=w, prefix=prefix)
    check_refused(outcome, case, w)
    assert snapshot(w) == before, f"written: {sorted(snapshot(w) - before)}"
