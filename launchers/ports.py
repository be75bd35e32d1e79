"""The one per-job port scheme of the Slurm launch paths: a Ray grid job and an srun job alike.

Every port a job opens is derived from its Slurm job id, so two jobs sharing a node never collide and nothing
depends on Ray's fixed defaults (6379, 8265, 10001, 44217, 44227...). Each job owns a block of
`JOB_PORT_BLOCK` ports starting at `job_port_base`; the blocks sit below the kernel's ephemeral range (where
Ray Train's, gloo's and NCCL's own kernel-picked ports come from) and above Ray's default worker ports
(10002-19999) that a default `ray start` on the node would use. Inside its block, a Ray grid job gives each
Ray node on one address a `NODE_PORT_BLOCK` (fake nodes on one host, as in tests/slurm_cluster.py, share an
address; real nodes each have slot 0). An srun job's rendezvous port (MASTER_PORT) is its block's first port.
A job whose block is in use on one of its nodes takes the next free one (`job_port_bases`, `first_free_block`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from suite.errors import UserError

PORT_BASE = 20000  # the default of RB_RAY_PORT_BASE
JOB_PORT_BLOCK = 256
NODE_PORT_BLOCK = 128
NODES_PER_ADDRESS = JOB_PORT_BLOCK // NODE_PORT_BLOCK
WORKER_PORT_OFFSET = 16  # offsets 0-4 head only, 5-10 every node, 16-127 Ray's worker processes


def ephemeral_port_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default floor


def port_band_start(env: Mapping[str, str]) -> int:
    raw = env.get("RB_RAY_PORT_BASE") or str(PORT_BASE)
    if not raw.isdigit() or not 1024 <= int(raw) < 65536:
        raise UserError(f"RB_RAY_PORT_BASE={raw!r}: accepted: a port number from 1024 to 65535")
    return int(raw)


PORT_TRIES = 8  # the default of RB_RAY_PORT_TRIES: blocks a job tries before it gives up


def job_port_bases(job: int, env: Mapping[str, str]) -> list[int]:
    """The first ports of the blocks job `job` may take, in order: its own, then the next ones in the band.

    Two jobs whose ids agree modulo the band's size, or a service on the node, can hold a job's own block;
    the job then moves on (launchers/slurm_ray.py, launchers/slurm.py). RB_RAY_PORT_BASE in `env` moves the
    band, RB_RAY_PORT_TRIES (default 8) says how many blocks to try.
    """
    base, ceiling = port_band_start(env), ephemeral_port_floor()
    slots = (ceiling - base) // JOB_PORT_BLOCK
    if slots < 1:
        raise UserError(
            f"no room for a block of {JOB_PORT_BLOCK} ports between RB_RAY_PORT_BASE={base} and the "
            f"ephemeral range at {ceiling}; accepted: RB_RAY_PORT_BASE ≤ {ceiling - JOB_PORT_BLOCK}"
        )
    raw = env.get("RB_RAY_PORT_TRIES") or str(PORT_TRIES)
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"RB_RAY_PORT_TRIES={raw!r}: accepted: a whole number ≥ 1")
    return [base + ((job + k) % slots) * JOB_PORT_BLOCK for k in range(min(int(raw), slots))]


def job_port_base(job: int, env: Mapping[str, str]) -> int:
    """The first port of job `job`'s own block (RB_RAY_PORT_BASE in `env` moves the band)."""
    return job_port_bases(job, env)[0]


def block_ports(base: int) -> range:
    return range(base, base + JOB_PORT_BLOCK)


def first_free_block(bases: list[int], busy: Mapping[str, Iterable[int]]) -> tuple[int | None, list[str]]:
    """The first of `bases` whose block holds none of the ports in use, and the lines for the job's log.

    `busy` maps each node to the ports it found in use (launchers/slurm_node.py `probe`). The lines name
    every block passed over and its busy ports, then the block taken; None: every block is in use.
    """
    lines = []
    for i, base in enumerate(bases):
        block = block_ports(base)
        held = {node: sorted(p for p in ports if p in block) for node, ports in busy.items()}
        held = {node: ports for node, ports in held.items() if ports}
        if not held:
            if i:
                lines.append(f"moved to port block {base}-{block.stop - 1} (block {i + 1} of {len(bases)})")
            return base, lines
        where = "; ".join(f"{node}: {' '.join(map(str, ports[:4]))}" for node, ports in sorted(held.items()))
        lines.append(f"port block {base}-{block.stop - 1} is in use ({where})")
    lines.append(
        f"all {len(bases)} port blocks this job may take are in use; set RB_RAY_PORT_BASE to a free band or"
        " RB_RAY_PORT_TRIES to try more blocks"
    )
    return None, lines


def _offset(n: int) -> property:
    return property(lambda self: self.base + n)


@dataclass(frozen=True)
class NodePorts:
    """The ports of one Ray node: offsets inside its node block."""

    base: int

    gcs = _offset(0)
    dashboard = _offset(1)
    client_server = _offset(2)
    # Two head-only metrics ports are fixed in Ray 2.60 unless set by environment
    # (ray/autoscaler/_private/constants.py: AUTOSCALER_METRIC_PORT=44217,
    # ray/dashboard/consts.py: DASHBOARD_METRIC_PORT=44227): two jobs on one node would collide.
    autoscaler_metrics = _offset(3)
    dashboard_metrics = _offset(4)
    node_manager = _offset(5)
    object_manager = _offset(6)
    metrics_export = _offset(7)
    dashboard_agent_listen = _offset(8)
    dashboard_agent_grpc = _offset(9)
    runtime_env_agent = _offset(10)
    min_worker = _offset(WORKER_PORT_OFFSET)
    max_worker = _offset(NODE_PORT_BLOCK - 1)

    def listening(self, head: bool) -> list[int]:
        """Every port the node will listen on (the head also opens offsets 0-4)."""
        fixed = range(self.base if head else self.node_manager, self.runtime_env_agent + 1)
        return [*fixed, *range(self.min_worker, self.max_worker + 1)]


def node_ports(job_base: int, slot: int) -> NodePorts:
    """Ports of the `slot`-th of this job's nodes sharing one address."""
    if not 0 <= slot < NODES_PER_ADDRESS:
        raise UserError(
            f"{slot + 1} of this job's nodes share one address; accepted: at most {NODES_PER_ADDRESS}"
        )
    return NodePorts(job_base + slot * NODE_PORT_BLOCK)


def job_node_ports(
    job: int, slots: list[int], env: Mapping[str, str], base: int | None = None
) -> list[NodePorts]:
    """The ports of a job's nodes, given each node's slot on its address (launchers/slurm.py Node.slot), in
    the job's own block or in the block at `base`."""
    base = job_port_base(job, env) if base is None else base
    return [node_ports(base, slot) for slot in slots]


def busy_ports(ports: Iterable[int]) -> list[int]:
    """Those of `ports` some process on this machine already listens on (TCP, any address)."""
    wanted = set(ports)
    taken = {
        c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr
    }
    return sorted(wanted & taken)
