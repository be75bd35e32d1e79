"""A grid on Ray: every point a Ray Tune trial whose function runs a Ray Train `TorchTrainer`.

Ray does the scheduling (Tune packs trials into the cluster up to `concurrency`), placement (Train's
placement group, spread across nodes for multi-node points) and retries (`FailureConfig`: a failed worker
group restarts). Each point's DeepSpeed checkpoints live under `results/<grid>/.checkpoints/<run_id>/`
(launchers/ray_worker.py): a restarted worker group, or a re-submitted grid whose driver died, resumes from
the newest. Finished points are skipped from the results table itself: `ok`/`diverged` rows.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import ray
from ray import tune
from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from launchers.grid import ClusterShape, Grid, purge_sources, runs_later
from launchers.handover import release_sources, trained_by
from launchers.plan import longest_first
from launchers.ray_worker import train_worker
from launchers.storage import check_shared_storage
from suite.data.config import DatasetInfo, data_config
from suite.distributed import free_port
from suite.errors import UserError, check
from suite.results import finished_run_ids, grid_dir, read_runs, remove_temporaries, write_run
from suite.row import failure_row
from suite.spec import RunSpec
from suite.vocab import FINISHED

# Trial drivers only wait on their TorchTrainer; a token CPU lets them not compete with the workers
# (Tune rejects 0).
TRIAL_DRIVER_CPU = 0.01
HIDDEN_STATE = (".checkpoints", ".tune")  # under results/<grid>/, removed when the grid completes


# Ray Train V2's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default,
# ray/train/v2/_internal/constants.py); a worker's result queue holds one report, so a finished run waits up to
# a whole interval before its trial ends, and a report made while one is pending blocks the training thread
# (measured: 2.6 s from a run's last row to its trial's end). Each poll is a cheap RPC. The preemption
# watcher is one more process per point polling the GCS: Slurm preemption reaches this suite as USR1 instead
# (slurm/ray-grid.sbatch). An operator's own values win (set in the environment before `resnet-bench run`).
TRAIN_LATENCY_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def worker_env(grid: Grid) -> dict[str, str]:
    """Environment every Ray worker process starts with."""
    env = {
        # Threads per rank follow the CPUs each worker reserves; oversubscription collapses throughput.
        "OMP_NUM_THREADS": str(max(1, int(grid.cluster.cpus_per_worker))),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
    }
    env.update(TRAIN_LATENCY_ENV)
    for key in (
        "DS_ACCELERATOR",
        "TORCH_EXTENSIONS_DIR",
        "RESNET_BENCH_DATA",
        "RESNET_BENCH_FAULTS",
        *TRAIN_LATENCY_ENV,
    ):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


@dataclass
class RaySession:
    resources: dict  # the cluster's total resources
    dashboard_url: str | None  # where the Ray dashboard answers (None if it did not start)


# A grid's console is the suite's own (launchers/progress.py). Tune's legacy reporter at verbosity 0 prints
# nothing, where its new one still prints a configuration box and paths under state the suite removes; Tune's
# own TensorBoard/CSV/JSON loggers duplicate what the suite writes (results/<grid>/tensorboard, the tables).
QUIET_TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0"}
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
# What of a local Ray's session logs is kept under results/<grid>/logs/ when it shuts down: every worker's
# stdout/stderr (DeepSpeed, the runs' own lines, tracebacks) and Ray Train's controller logs.
KEPT_LOGS = ("worker-*.out", "worker-*.err", "train")


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set `values` in this process's environment for the block; an operator's own setting wins."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def ray_session(grid: Grid, *, verbose: bool = False, logs_dir: Path | None = None) -> Iterator[RaySession]:
    """Connect to `RAY_ADDRESS` if set (token auth as the cluster requires), else a local Ray on 127.0.0.1.

    Without `verbose`, workers' output stays in Ray's log files instead of the console; a local Ray's are
    copied to `logs_dir` when it shuts down, and its temp dir is removed.
    """
    # Ray's services stay on loopback for a local cluster: launchers/__init__.py set that before any import.
    runtime_env = {"env_vars": worker_env(grid)}
    console = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR}
    address = os.environ.get("RAY_ADDRESS")
    temp_dir = None
    if address:
        # A cluster started with token authentication needs its clients to say so. Only an explicitly given
        # token turns it on here: a stale ~/.ray/auth_token must not switch a client to token mode against a
        # cluster without it (Ray then cancels every actor the client creates).
        if "RAY_AUTH_TOKEN" in os.environ or "RAY_AUTH_TOKEN_PATH" in os.environ:
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        context = ray.init(address=address, runtime_env=runtime_env, **console)
    else:
        # A short, private temp dir: Ray's socket paths must stay under 107 bytes, and a shared /tmp/ray
        # may belong to another user or hold another cluster's address.
        temp_dir = tempfile.mkdtemp(prefix="rb-ray-", dir=os.environ.get("RAY_TMPDIR", "/tmp"))
        slots = grid.cluster.nodes * grid.cluster.devices_per_node
        context = ray.init(
            num_cpus=max(os.cpu_count() or 1, int(slots * grid.cluster.cpus_per_worker + 1)),
            num_gpus=None if grid.cluster.use_gpu else 0,
            include_dashboard=grid.cluster.dashboard,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port() if grid.cluster.dashboard else None,
            _node_ip_address="127.0.0.1",
            _temp_dir=temp_dir,
            runtime_env=runtime_env,
            **console,
        )
    dashboard = context.dashboard_url or None
    keep = logs_dir is not None
    try:
        with _environment({**TUNE_ENV, **({} if verbose else QUIET_TUNE_ENV)}):
            yield RaySession(
                ray.cluster_resources(),
                dashboard if not dashboard or "://" in dashboard else f"http://{dashboard}",
            )
    except UserError:
        keep = False  # refused before any point started: nothing is written
        raise
    finally:
        ray.shutdown()
        if temp_dir:
            if keep:
                keep_logs(Path(temp_dir), logs_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)


def keep_logs(temp_dir: Path, logs_dir: Path) -> None:
    """Copy the worker and Train logs of the local Ray session under `temp_dir` to `logs_dir/<session>/`."""
    for session in sorted(temp_dir.glob("session_2*")):
        logs = session / "logs"
        target = logs_dir / session.name
        for pattern in KEPT_LOGS:
            for path in logs.glob(pattern):
                if path.is_dir():
                    shutil.copytree(path, target / path.name, dirs_exist_ok=True)
                elif path.stat().st_size:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target / path.name)


def dashboard_port(preferred: int = 8265) -> int:
    """Ray's usual dashboard port if it is free, else any free one (another Ray may hold 8265 here)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def check_capacity(grid: Grid, specs: list[RunSpec], resources: dict) -> None:
    """A point that needs more than the whole cluster would wait forever: refuse it up front."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    for spec in specs:
        need_cpu = spec.world_size * grid.cluster.cpus_per_worker + TRIAL_DRIVER_CPU
        check(
            need_cpu <= cpus + 1e-9,
            f"point {spec.run_id} needs {need_cpu:g} CPUs ({spec.world_size} workers × "
            f"{grid.cluster.cpus_per_worker:g}) but the Ray cluster has {cpus:g}",
        )
        if grid.cluster.use_gpu:
            check(
                spec.world_size <= gpus,
                f"point {spec.run_id} needs {spec.world_size} GPUs but the Ray cluster has {gpus:g}",
            )


def scaling_config(cluster: ClusterShape, spec: RunSpec):
    resources = {"CPU": cluster.cpus_per_worker}
    if cluster.use_gpu:
        resources["GPU"] = 1
    if spec.nodes > 1:
        # One worker per node must land on distinct nodes (STRICT_SPREAD); with several per node, SPREAD
        # balances them across nodes as evenly as the cluster allows.
        strategy = "STRICT_SPREAD" if spec.devices_per_node == 1 else "SPREAD"
    else:
        strategy = "PACK"
    return ScalingConfig(
        num_workers=spec.world_size,
        use_gpu=cluster.use_gpu,
        resources_per_worker=resources,
        placement_strategy=strategy,
    )


def failed_row(spec: RunSpec, error: str, restarts: int) -> dict:
    """The row of a point whose workers never produced one (e.g. every restart failed)."""
    now = datetime.now(UTC)
    return failure_row(spec, error=error, restarts=restarts, started=now, ended=now)


def trial(config: dict, datasets: Mapping[str, ray.ObjectRef]) -> dict:
    """Ray Tune function trainable: one grid point = one Ray Train run (named by grid and run id).

    `datasets` maps each point's run id to its DatasetInfo (as a dict) in the object store, as the driver
    checked it: the workers read it from there and never list or decode the dataset again.
    """
    spec = RunSpec.from_dict(config["spec"])
    cluster = ClusterShape(**config["cluster"])
    max_failures = config["max_failures"]
    results = config["results"]
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": spec.to_dict(),
            "results": results,
            "slurm_job_id": config.get("slurm_job_id"),
            "dataset": datasets[spec.run_id],
            "trained_by": config["trained_by"].get(spec.run_id),
        },
        scaling_config=scaling_config(cluster, spec),
        run_config=RunConfig(
            name=spec.run_id,
            storage_path=str(Path(results, spec.grid, ".checkpoints").resolve()),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=[TuneReportCallback()],
            # Train's per-epoch INFO lines (every report, every checkpoint, from every rank) would bury the
            # grid's progress display; they still reach Ray's log files under the session directory.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        result = trainer.fit()
        row = result.return_value
        error = None if result.error is None else str(result.error)
    except Exception as e:  # every restart failed: the point still gets its row
        row, error = None, f"{type(e).__name__}: {e}"
    if not isinstance(row, dict):
        row = failed_row(spec, error or "the Ray Train run returned no result", max_failures)
        write_run(results, row, [])
    kept = row["status"] == "ok" and spec.run_id in config["keep_checkpoints"]
    if row["status"] in FINISHED and not kept:
        shutil.rmtree(Path(results, spec.grid, ".checkpoints", spec.run_id), ignore_errors=True)
    return {k: row.get(k) for k in ("run_id", "status", "images_per_s", "top1", "blocks_discarded", "error")}


def share_datasets(specs: list[RunSpec], infos: Mapping[RunSpec, DatasetInfo]) -> dict[str, ray.ObjectRef]:
    """Each distinct dataset's description in Ray's object store once, by run id.

    An ImageNet index is tens of MB: in the object store it is stored once and fetched by each worker,
    instead of being copied into every trial's config (which Tune also keeps in its experiment state).
    """
    refs: dict[tuple, ray.ObjectRef] = {}
    shared = {}
    for spec in specs:
        dataset = data_config(spec).dataset
        if dataset not in refs:
            refs[dataset] = ray.put(infos[spec].to_dict())
        shared[spec.run_id] = refs[dataset]
    return shared


@dataclass
class GridOutcome:
    planned: int
    skipped: int
    ran: int
    statuses: dict[str, str]  # run_id -> status of the rows now in the table for this grid


def run_grid(
    grid: Grid,
    results: str | Path,
    infos: Mapping[RunSpec, DatasetInfo],
    *,
    progress=None,
    verbose: bool = False,
) -> GridOutcome:
    """Run every unfinished point of `grid`; rows land in `results/<grid>/` (suite/results.py).

    `infos` is the driver's check of each point's data (launchers/driver.py `preflight`). `progress` (a Tune
    callback, launchers/progress.py) hears of the session's dashboard and of every trial.
    """
    results = str(results)
    done = finished_run_ids(results, grid.name)
    todo = [s for s in grid.specs if s.run_id not in done]
    if todo:
        logs = grid_dir(results, grid.name) / "logs"
        with ray_session(grid, verbose=verbose, logs_dir=logs) as session:
            check_capacity(grid, todo, session.resources)
            if progress is not None:
                progress.session_started(session.dashboard_url, logs)
            if any(s.nodes > 1 for s in todo):
                seen_by = check_shared_storage(grid_dir(results, grid.name).resolve())
                if progress is not None:
                    progress.note(
                        f"shared storage: {seen_by} nodes see {grid_dir(results, grid.name).resolve()}"
                    )
            datasets = share_datasets(todo, infos)
            # Children (scratch, matched posthoc) read their parent's row, and post-hoc points the final
            # checkpoint of the plain point they purge: those run in a later Tune experiment.
            sources = purge_sources(grid.specs)
            keep = sorted({src.run_id for child, src in sources.items() if child not in done})
            for wave in (0, 1):
                specs = longest_first(
                    [s for s in todo if runs_later(s, sources) == bool(wave)], infos, sources
                )
                if specs:
                    handed = trained_by(results, grid.name, specs, sources) if wave else {}
                    _tuner(grid, results, specs, datasets, progress, wave, verbose, keep, handed).fit()
            release_sources(results, grid.name, sources)
    rows = read_runs(results, grid.name).select(["run_id", "status"]).to_pylist()
    statuses = {r["run_id"]: r["status"] for r in rows}
    wanted = {s.run_id for s in grid.specs}
    if wanted <= set(statuses) and all(statuses[r] in FINISHED for r in wanted):
        # Every point is finished, so no writer of this grid is alive: what is left is debris of killed ones.
        for name in HIDDEN_STATE:
            shutil.rmtree(grid_dir(results, grid.name) / name, ignore_errors=True)
        remove_temporaries(results, grid.name)
    return GridOutcome(len(grid.specs), len(grid.specs) - len(todo), len(todo), statuses)


def _tuner(
    grid: Grid,
    results: str,
    specs: list[RunSpec],
    datasets: dict,
    progress,
    wave: int,
    verbose: bool,
    keep: list[str],
    handed: dict[str, str],
) -> tune.Tuner:
    """One Tune experiment over `specs`: each a trial running one Ray Train run (`trial`).

    `keep`: points whose final checkpoint a later post-hoc point purges; `handed`: post-hoc run id -> that
    checkpoint (`trained_by`).
    """
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(trial, datasets=datasets), {"cpu": TRIAL_DRIVER_CPU}),
        param_space={
            "spec": tune.grid_search([s.to_dict() for s in specs]),
            "cluster": asdict(grid.cluster),
            "max_failures": grid.max_failures,
            "results": str(Path(results).resolve()),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "keep_checkpoints": keep,
            "trained_by": handed,
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=grid.concurrency,
            # A trial process already holds ray.train, torch and pyarrow imported: the next point reuses it
            # instead of paying those imports again (`trial` keeps no state between points).
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=grid.name if wave == 0 else f"{grid.name}-children",
            storage_path=str((grid_dir(results, grid.name) / ".tune").resolve()),
            verbose=1 if verbose else 0,
            callbacks=[progress] if progress else None,
        ),
    )


def _trial_name(trial) -> str:
    spec = trial.config["spec"]
    return RunSpec.from_dict(spec).run_id
