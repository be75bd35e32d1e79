"""Before a multi-node point starts: does every node of the Ray cluster see the grid's results directory?

A multi-node point's ranks write and read under `results/<grid>/`: rank 0 writes the row, and every rank
saves its DeepSpeed shard under `results/<grid>/.checkpoints/` (launchers/ray_worker.py) and reads it back on
a restart, which Ray may place on another node. A node whose `results/` is its own local disk would train, and then lose its row or fail to resume,
hours later. So each node is asked to read a marker the driver wrote and to write one back, which the driver
reads; a node that cannot stops the grid with one line naming it and the path (slurm/README.md).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from suite.errors import UserError

CHECK_DIR = ".storage-check"
ANSWER_TIMEOUT_S = 120


@ray.remote(num_cpus=0)
def _look(marker: str, token: str, answer: str) -> tuple[str, str | None]:
    """On one node: read the driver's marker, write this node's answer; (node, what went wrong or None)."""
    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    try:
        seen = Path(marker).read_text()
    except OSError as e:
        return node, f"it cannot read the driver's marker {marker} ({e.strerror or e})"
    if seen != token:
        return node, f"its {marker} holds another marker: a different file system under the same path"
    try:
        Path(answer).write_text(token)
    except OSError as e:
        return node, f"it cannot write {answer} ({e.strerror or e})"
    return node, None


def _failure(node: str, directory: Path, problem: str) -> UserError:
    return UserError(
        f"node {node} does not share the results directory {directory}: {problem}; accepted: a results"
        " directory on a file system every node mounts at the same path (slurm/README.md)"
    )


def check_shared_storage(directory: Path) -> int:
    """Every alive node reads the driver's marker in `directory` and writes its own; the nodes checked.

    Raises `UserError` naming the first node that cannot, and the path. Leaves nothing behind.
    """
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return len(nodes)
    where = directory / CHECK_DIR
    token = secrets.token_hex(16)
    created = [p for p in (where, *where.parents) if not p.exists()]  # removed again if left empty
    where.mkdir(parents=True, exist_ok=True)
    marker = where / token
    marker.write_text(token)
    try:
        asked = []
        for n in nodes:
            answer = where / f"{token}.{n['NodeID'][:16]}"
            strategy = NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ref = _look.options(scheduling_strategy=strategy).remote(str(marker), token, str(answer))
            asked.append((n, answer, ref))
        for n, answer, ref in asked:
            name = f"{n['NodeManagerHostname']} ({n['NodeManagerAddress']})"
            try:
                node, problem = ray.get(ref, timeout=ANSWER_TIMEOUT_S)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as e:
                raise _failure(name, directory, f"it did not answer ({type(e).__name__})") from None
            if problem:
                raise _failure(node, directory, problem)
            try:
                back = answer.read_text()
            except OSError:
                back = None
            if back != token:
                raise _failure(node, directory, f"the driver does not see the file {answer} it wrote")
        return len(nodes)
    finally:
        shutil.rmtree(where, ignore_errors=True)
        for path in created[1:]:
            with contextlib.suppress(OSError):  # not empty: the grid has written there meanwhile
                path.rmdir()
