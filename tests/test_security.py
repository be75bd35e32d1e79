"""Security properties, as tests: where things listen, who can talk to the cluster, what a checkpoint may run,
and where a name may write.

- Listening sockets: no script or default binds Ray, its dashboard or a metrics port on 0.0.0.0 — checked in
  the source (slurm/*.sbatch, launchers/, suite/) and, for a local Ray started by `ray_session`, on the live
  sockets (`ss -ltunp`, only the processes this test started).
- Token authentication on the Slurm path (slurm/ray-grid.sbatch → launchers/slurm_ray.py): the token is generated
  into a private file of mode 0600, never inherited, and a worker node's copy is 0600 too and gone afterwards.
- Checkpoints: `suite.models.load_model` refuses a pickle that would run code (weights_only=True); DeepSpeed
  0.19.8's `load_checkpoint` does not, so the resume path swaps in a weights-only loader (suite/checkpoint.py).
- Names: a grid name or run id with `../` or `/` cannot make the writer leave the results directory.
"""

from __future__ import annotations

import ast
import contextlib
import ipaddress
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from launchers.ports import job_node_ports, job_port_base
from launchers.slurm import JobLog, SlurmJob, order_nodes
from launchers.slurm_ray import RayCluster, ray_start, write_token
from suite.errors import UserError
from suite.results import check_name, write_run
from tests.test_bad_input import cli

REPO = Path(__file__).resolve().parent.parent
SBATCH = sorted((REPO / "slurm").glob("*.sbatch"))


# ---------------------------------------------------------------------------------------------------------
# Listening addresses: the source


def shell_code(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of a shell script with comments removed (whole-line and trailing `  # …`)."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        out.append((n, re.sub(r"\s+#\s.*$", "", line)))
    return out


def python_sources() -> list[Path]:
    packages = sorted(p for d in ("launchers", "suite", "benchmarks") for p in (REPO / d).rglob("*.py"))
    return [*packages, REPO / "resnet_bench.py"]


def test_no_script_or_default_binds_every_interface():
    offenders = []
    for path in SBATCH:
        for n, line in shell_code(path):
            if re.search(
                r"0\.0\.0\.0|\[::\]|--dashboard-host[= ](?!127\.0\.0\.1)|--node-ip-address[= ]0", line
            ):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    for path in python_sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in ("0.0.0.0", "::")
            ):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: literal {node.value!r}")
            if isinstance(node, ast.keyword) and node.arg in ("dashboard_host", "host", "_node_ip_address"):
                value = node.value.value if isinstance(node.value, ast.Constant) else None
                if value != "127.0.0.1":
                    offenders.append(
                        f"{path.relative_to(REPO)}:{node.lineno}: {node.arg}={ast.unparse(node.value)}"
                    )
    assert offenders == []


def test_every_local_ray_the_suite_starts_names_loopback_for_dashboard_and_node():
    tree = ast.parse((REPO / "launchers" / "ray_grid.py").read_text())
    inits = [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "ray.init"
        and not any(k.arg == "address" for k in n.keywords)
    ]  # fmt: skip
    assert inits, "ray_session starts a local Ray with ray.init(...)"
    for call in inits:
        kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert kw.get("dashboard_host") == "'127.0.0.1'" and kw.get("_node_ip_address") == "'127.0.0.1'", kw
    for path in SBATCH:
        text = path.read_text()
        if "--include-dashboard=true" in text or "--head" in text:
            assert "--dashboard-host=127.0.0.1" in text, path


# ---------------------------------------------------------------------------------------------------------
# Listening addresses: the live sockets of a local Ray


def _loopback(host: str) -> bool:
    host = host.strip("[]").split("%")[0]
    if host == "*":
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def listeners(pids: set[int]) -> list[dict]:
    """Listening TCP/UDP sockets owned by `pids`, from `ss -ltunp`."""
    out = subprocess.run(["ss", "-Hltunp"], capture_output=True, text=True, timeout=30, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p): name for name, p in re.findall(r'\("([^"]+)",pid=(\d+)', line)}
        mine = {p: n for p, n in owners.items() if p in pids}
        if not mine:
            continue
        fields = line.split()
        local = fields[4]
        host, _, port = local.rpartition(":")
        found.append(
            {"proto": fields[0], "host": host, "port": int(port), "process": sorted(set(mine.values()))}
        )
    return found


def tree_pids(root: int) -> set[int]:
    try:
        proc = psutil.Process(root)
        return {root} | {c.pid for c in proc.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def describe(sockets: list[dict]) -> str:
    return "; ".join(f"{s['proto']} {s['host']}:{s['port']} ({'/'.join(s['process'])})" for s in sockets)


def kill_session(proc: subprocess.Popen) -> None:
    pids = tree_pids(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:  # whatever left the process group
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)


SESSION_PROBE = textwrap.dedent(
    """
    import json, os, sys
    from launchers.grid import ClusterShape, Grid
    from launchers.ray_grid import ray_session
    grid = Grid("probe", ClusterShape(), 1, 0, ())
    with ray_session(grid):
        import ray
        info = ray._private.worker._global_node.address_info
        print(json.dumps({"gcs": info["gcs_address"], "dashboard": info.get("webui_url")}), flush=True)
        sys.stdin.read()  # hold the session until the test has looked
    """
)


@pytest.mark.slow
def test_a_local_ray_session_listens_on_loopback_only(tmp_path):
    """ray_session with the loopback switch set before Ray is imported (as tests/conftest.py and the Slurm
    script do): the GCS, the dashboard and every other listener stay on 127.0.0.1."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SESSION_PROBE], cwd=REPO, env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line, "the Ray session did not start"
        info = json.loads(line)
        time.sleep(3)  # agents and metrics exporters come up just after ray.init returns
        sockets = listeners(tree_pids(proc.pid))
    finally:
        kill_session(proc)
    ports = {s["port"] for s in sockets}
    gcs_port = int(info["gcs"].rpartition(":")[2])
    assert gcs_port in ports, f"no GCS listener among {describe(sockets)}"
    assert info["dashboard"] and int(info["dashboard"].rpartition(":")[2]) in ports
    assert info["gcs"].startswith("127.0.0.1:") and info["dashboard"].startswith("127.0.0.1:")
    exposed = [s for s in sockets if not _loopback(s["host"])]
    assert exposed == [], f"listening beyond loopback: {describe(exposed)}"


@pytest.mark.slow
def test_resnet_bench_run_from_a_plain_shell_listens_on_loopback_only(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(
        yaml.safe_dump({
            "name": "g", "cluster": {"nodes": 1, "devices_per_node": 1, "cpus_per_worker": 0.5},
            "defaults": {"width": 4, "small_stem": True, "image_size": 16, "dataset": "synthetic",
                         "micro_batch": 8, "epochs": 1, "steps_per_epoch": 4, "loader_workers": 0},
        })
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnet_bench", "run", str(grid), "--results", str(tmp_path / "results")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    sockets: dict[tuple, dict] = {}
    try:
        deadline, seen_gcs_at = time.monotonic() + 300, None
        while proc.poll() is None and time.monotonic() < deadline:
            for s in listeners(tree_pids(proc.pid)):
                sockets[(s["proto"], s["host"], s["port"])] = s
            if seen_gcs_at is None and any("gcs_server" in s["process"] for s in sockets.values()):
                seen_gcs_at = time.monotonic()
            if seen_gcs_at is not None and time.monotonic() - seen_gcs_at > 10:
                break  # the node, its agents and the first workers are up
            time.sleep(1)
    finally:
        kill_session(proc)
    assert any("gcs_server" in s["process"] for s in sockets.values()), "Ray never came up"
    exposed = [s for s in sockets.values() if not _loopback(s["host"])]
    assert exposed == [], f"listening beyond loopback: {describe(exposed)}"


# ---------------------------------------------------------------------------------------------------------
# Token authentication on the Slurm path


def grid_job_cluster(tmp_path: Path, inherited: dict[str, str], ips=("127.0.0.1", "127.0.0.1")) -> RayCluster:
    """The Ray cluster a `resnet-bench slurm-grid` job (slurm/ray-grid.sbatch) builds, short of starting it:
    its token written, its environment and every node's command derived, as grid_job does."""
    job_dir = tmp_path / "job"
    job_dir.mkdir(mode=0o700)
    write_token(job_dir / "auth_token")
    job = SlurmJob("4242", "node[1-2]", 0, 1, 0, tmp_path)
    nodes = order_nodes(["node1", "node2"], {n: (n, "vm") for n in ("node1", "node2")},
                        dict(zip(("node1", "node2"), ips, strict=True)), "node1")  # fmt: skip
    ports = job_node_ports(4242, [n.slot for n in nodes], {})
    return RayCluster(job, nodes, ports, job_dir, inherited, JobLog("test"))


@pytest.mark.parametrize(
    "ips", [("127.0.0.1", "127.0.0.1"), ("10.0.0.1", "10.0.0.2")], ids=["loopback", "real"]
)
def test_ray_grid_sbatch_turns_token_authentication_on(tmp_path, ips):
    inherited = {**os.environ, "RAY_AUTH_TOKEN": "inherited", "RAY_AUTH_TOKEN_PATH": "/inherited",
                 "RAY_ADDRESS": "elsewhere:6379"}  # fmt: skip
    cluster = grid_job_cluster(tmp_path, inherited, ips)
    env = cluster.env  # every process of the job: Ray nodes, the driver, the join check
    assert env["RAY_AUTH_MODE"] == "token", "clients must run in token mode"
    assert "RAY_AUTH_TOKEN" not in env, "no token inherited from the submitting shell"
    assert (
        env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "job" / "auth_token") != inherited["RAY_AUTH_TOKEN_PATH"]
    )
    assert env["RAY_ADDRESS"] != inherited["RAY_ADDRESS"]
    token = (tmp_path / "job" / "auth_token").read_text()
    for i, (node, ports) in enumerate(zip(cluster.nodes, cluster.ports, strict=True)):
        argv, step_env = ray_start(i, node, ports, cluster)
        # The token travels in the environment of the srun step, never on a command line (ps would show it).
        assert not [a for a in argv if token in a or re.match(r"--(auth-)?token\b", a)], argv
        assert step_env.get("RB_NODE_TOKEN") == (token if i else None)


def user_token() -> tuple | None:
    path = Path.home() / ".ray" / "auth_token"
    return (path.read_bytes(), path.stat().st_mtime_ns) if path.exists() else None


def test_ray_grid_sbatch_writes_the_token_0600_and_exports_it(tmp_path):
    user_token_before = user_token()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    cluster = grid_job_cluster(tmp_path, env)
    job_tmp = tmp_path / "job"
    assert (cluster.env["RAY_AUTH_MODE"], cluster.env["RAY_AUTH_TOKEN_PATH"]) == (
        "token",
        str(job_tmp / "auth_token"),
    )
    token = job_tmp / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text().strip()) >= 32
    assert sorted(p.name for p in job_tmp.iterdir()) == ["auth_token"]  # nothing else written beside it
    assert user_token() == user_token_before  # the user's own ~/.ray/auth_token neither used nor touched


def test_ray_grid_sbatch_node_copy_of_the_token_is_0600_and_removed(tmp_path):
    # What runs in a worker node's srun step (launchers/slurm_node.py), with a probe in place of `ray start`.
    node_dir = tmp_path / "job" / "n1"
    probe = 'stat -c %a "$RAY_AUTH_TOKEN_PATH"; cat "$RAY_AUTH_TOKEN_PATH"; echo; env | grep -c RB_NODE_TOKEN || true'
    base = job_port_base(os.getpid(), {})
    step = [sys.executable, "-m", "launchers.slurm_node", "step", str(node_dir), str(base), "worker", "--"]
    env = {**os.environ, "RB_NODE_TOKEN": "s3cret-token-value"}
    proc = subprocess.run([*step, "sh", "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["600", "s3cret-token-value", "0"]  # 0600, and not in the child's env
    assert not node_dir.exists()  # token and node dir removed after a clean stop


# ---------------------------------------------------------------------------------------------------------
# Checkpoints and pickles


class RunsCode:
    """A pickle payload: unpickling it runs code (touches `marker`, and exits 97 if `exit`)."""

    def __init__(self, marker: Path, exit: bool = False):
        self.marker, self.exit = str(marker), exit

    def __reduce__(self):
        code = f"import os, pathlib; pathlib.Path({self.marker!r}).touch()"
        if self.exit:
            code += "; os._exit(97)"
        return (exec, (code,))


def test_load_model_refuses_a_pickle_that_runs_code(tmp_path):
    from suite.models import build_model, load_model, save_model

    model = build_model(arch="resnet50", width=4, num_classes=10, small_stem=True)
    save_model(model, tmp_path / "good.pt")
    again = load_model(tmp_path / "good.pt")  # a real checkpoint still loads
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    marker = tmp_path / "pwned"
    torch.save({"arch": RunsCode(marker), "state_dict": {}}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl|unsupported"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()


def test_every_torch_load_in_the_suite_is_weights_only():
    calls = []
    for path in python_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) in ("torch.load", "load")
                and any(k.arg == "map_location" for k in node.keywords)
            ):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", kw.get("weights_only")))
    assert calls, "expected suite.models.load_model's torch.load"
    assert [c for c in calls if c[1] != "True"] == []


def test_deepspeed_0_19_8_unpickles_checkpoints_fully():
    """Why suite/checkpoint.py exists: DeepSpeed's checkpoint engine
    loads every checkpoint file with weights_only=False. Fails if a DeepSpeed upgrade changes that."""
    import inspect

    import deepspeed
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    assert deepspeed.__version__ == "0.19.8"
    assert "weights_only=False" in inspect.getsource(TorchCheckpointEngine.load)


@pytest.mark.slow
def test_resuming_from_a_checkpoint_that_runs_code_does_not_run_it(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "epoch0001").mkdir(parents=True)
    (ckpt / "latest").write_text("epoch0001")
    marker = tmp_path / "pwned"
    torch.save({"module": RunsCode(marker, exit=True)}, ckpt / "epoch0001" / "mp_rank_00_model_states.pt")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"arch": "resnet50", "width": 4, "small_stem": True, "image_size": 16, "grid": "t",
                        "dataset": "synthetic", "micro_batch": 8, "epochs": 1, "steps_per_epoch": 1,
                        "warmup_steps": 0, "loader_workers": 0})
    )  # fmt: skip
    argv = ["run-one", str(config), "--results", str(tmp_path / "results"), "--checkpoint-dir", str(ckpt)]
    outcome = cli(argv, cwd=tmp_path, io_dir=tmp_path / "io")
    assert not marker.exists() and outcome.code != 97, "resuming ran the checkpoint's code"


# ---------------------------------------------------------------------------------------------------------
# Names that would leave the results directory

ESCAPES = ["../escape", "../../escape", "a/b", "/tmp/abs", "..", ".", ".hidden", "a/../../b", "a\\..\\b", ""]


@pytest.mark.parametrize("field", ["grid", "run_id"])
@pytest.mark.parametrize("name", ESCAPES)
def test_write_run_never_leaves_the_results_directory(field, name, tmp_path):
    from datetime import UTC, datetime

    results = tmp_path / "box" / "results"
    results.mkdir(parents=True)
    t = datetime(2026, 1, 1, tzinfo=UTC)
    row = {"run_id": "r", "grid": "g", "seed": 0, "repeat": 0, "launcher": "local", "spec_json": "{}",
           "arch": "resnet50", "variant": "resnet", "width": 4, "image_size_px": 16, "num_classes": 10,
           "dataset": "synthetic", "nodes": 1, "devices_per_node": 1, "world_size": 1, "precision": "fp32",
           "zero_stage": 0, "status": "ok", "restarts": 0, "started_at": t, "ended_at": t}  # fmt: skip
    with pytest.raises(UserError, match="not a safe name"):
        write_run(results, {**row, field: name}, [{"epoch": 0, "elapsed_s": 0.0}])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["box", "box/results"]


@pytest.mark.parametrize(
    "argv",
    [
        ["run-one", "{config}", "--set", "grid=../escape"],
        ["run-one", "{config}", "--set", "grid=a/b"],
        ["run", "{grid}", "--dry-run"],
        ["report", "--grid", "../escape"],
    ],
    ids=["run-one grid=../escape", "run-one grid=a/b", "run name ../../escape", "report --grid ../escape"],
)
def test_a_name_with_a_path_in_it_is_refused_at_the_cli(argv, tmp_path):
    box = tmp_path / "box"
    (box / "results" / "g" / "runs").mkdir(parents=True)  # an existing grid, for report
    config = box / "config.yaml"
    config.write_text(yaml.safe_dump({"arch": "resnet50", "width": 4, "small_stem": True, "image_size": 16,
                                      "dataset": "synthetic", "micro_batch": 8}))  # fmt: skip
    grid = box / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "../../escape", "defaults": {"dataset": "synthetic"}}))
    args = [a.format(config=config, grid=grid) for a in argv]
    args += ["--results", str(box / "results")] if args[0] != "report" else [str(box / "results")]

    def tree() -> list[Path]:
        return sorted(p for p in tmp_path.rglob("*") if p.relative_to(tmp_path).parts[0] != "io")

    before = tree()
    outcome = cli(args, cwd=box, io_dir=tmp_path / "io")
    assert outcome.code == 2, outcome.err[-2000:]
    assert "not a safe name" in outcome.err or "not found under" in outcome.err, outcome.err
    assert tree() == before


NAME_SETTINGS = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def single_safe_component(name: str) -> bool:
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and not name.startswith(".")
        and ".." not in name
        and name.isascii()
        and name.isprintable()
        and len(name) <= 128
    )


@NAME_SETTINGS
@given(st.one_of(st.text(max_size=140), st.from_regex(r"[A-Za-z0-9._/\\-]{0,20}", fullmatch=True)))
def test_an_accepted_name_is_one_safe_path_component(name):
    if name.endswith("\n"):
        return  # a separate, known bug: test_a_name_with_a_trailing_newline_is_refused
    try:
        check_name("grid name", name)
    except UserError:
        return
    assert single_safe_component(name), repr(name)
    root = Path("/results")
    assert (root / name).parent == root and (root / name).name == name


@NAME_SETTINGS
@example("g\n")
@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}\n", fullmatch=True))
def test_a_name_with_a_trailing_newline_is_refused(name):
    with pytest.raises(UserError):
        check_name("grid name", name)
