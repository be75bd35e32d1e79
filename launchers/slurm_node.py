"""The programs a Ray grid job (launchers/slurm_ray.py) runs as child processes, each a `python -m` call:

python -m launchers.slurm_node step DIR PORT_BASE head|worker -- RAY_START_COMMAND...
    inside a node's srun step: make the node's private Ray dir, write the node's copy of the token (it
    travels in the step's environment as RB_NODE_TOKEN, never on a command line), refuse to start on
    ports already in use, run Ray, and remove the dir (token included) once Ray has stopped cleanly.
python -m launchers.slurm_node probe BASE...
    in one srun step on every node before the cluster starts: print `PROBE <node>` and the ports in use in
    the port blocks starting at each BASE, so the job can take a block that is free on all of its nodes.
python -m launchers.slurm_node members TIMEOUT IP:NODE_MANAGER_PORT=NAME...
    wait until every named raylet has registered with the GCS at RAY_ADDRESS; print `MEMBERS` and the
    cluster's raylets (exit 0), or `MISSING` and the names of the nodes not there in time (exit 3).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ray

from launchers.ports import NodePorts, block_ports, busy_ports
from launchers.slurm import remove_if_empty

PORTS_BUSY = 3  # the step's exit code when another job (or anything) holds one of the node's ports
CLEAN_STOP = (0, -signal.SIGTERM)  # a clean stop leaves nothing behind; a failed Ray keeps its logs


def node_step(node_dir: Path, ports: NodePorts, head: bool, command: list[str]) -> int:
    env = dict(os.environ)
    os.umask(0o077)  # the node's dirs and files: this user's only
    shutil.rmtree(node_dir, ignore_errors=True)
    node_dir.mkdir(parents=True)
    token = env.pop("RB_NODE_TOKEN", None)
    if token:
        path = node_dir / "auth_token"
        path.write_text(token)
        env["RAY_AUTH_TOKEN_PATH"] = str(path)
    if busy := busy_ports(ports.listening(head)):
        node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        taken = " ".join(map(str, busy))
        print(f"node {node}: ports already in use: {taken} (another job? set RB_RAY_PORT_BASE)", flush=True)
        return PORTS_BUSY
    ray_node = subprocess.Popen(command, env=env)
    # srun forwards the SIGTERM that stops this node; `ray start --block` stops its Ray processes on it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: ray_node.send_signal(signal.SIGTERM))
    rc = ray_node.wait()
    (node_dir / "auth_token").unlink(missing_ok=True)
    if rc in CLEAN_STOP:
        shutil.rmtree(node_dir, ignore_errors=True)
        remove_if_empty(node_dir.parent)  # the job dir, on nodes where nothing else is in it
    return 128 - rc if rc < 0 else rc


def probe(bases: list[int]) -> int:
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    busy = busy_ports(p for base in bases for p in block_ports(base))
    print("PROBE", node, *busy, flush=True)
    return 0


def members(timeout: float, want: dict[str, str]) -> int:
    deadline = time.monotonic() + timeout
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="ERROR")
    while True:
        alive = {f"{n['NodeManagerAddress']}:{n['NodeManagerPort']}" for n in ray.nodes() if n["Alive"]}
        missing = [name for key, name in want.items() if key not in alive]
        if not missing:
            print("MEMBERS", *sorted(alive))
            return 0
        if time.monotonic() > deadline:
            print("MISSING", *missing)
            return 3
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    if argv[:1] == ["step"] and len(argv) > 5 and argv[4] == "--":
        node_dir, base, role = argv[1:4]
        return node_step(Path(node_dir), NodePorts(int(base)), role == "head", argv[5:])
    if argv[:1] == ["probe"] and len(argv) > 1 and all(a.isdigit() for a in argv[1:]):
        return probe([int(a) for a in argv[1:]])
    if argv[:1] == ["members"] and len(argv) > 2:
        return members(float(argv[1]), dict(w.split("=", 1) for w in argv[2:]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
