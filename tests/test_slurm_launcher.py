"""The Slurm launchers' own logic, without Slurm (launchers/ports.py, slurm.py, slurm_ray.py): the port scheme
both launch paths share, node discovery from scontrol's output, the token file, the grid-shape check."""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path

import pytest

from launchers.direct import rank_env_from_slurm
from launchers.ports import (
    JOB_PORT_BLOCK,
    NODE_PORT_BLOCK,
    PORT_BASE,
    busy_ports,
    ephemeral_port_floor,
    job_node_ports,
    job_port_base,
    node_ports,
)
from launchers.slurm import Node, check_grid_fits, gpus_per_node, order_nodes, parse_node_records
from launchers.slurm_ray import grid_job, write_token
from suite.errors import UserError

SRUN = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "MASTER_ADDR": "node1"}
BANDS = [{}, {"RB_RAY_PORT_BASE": "20512"}, {"RB_RAY_PORT_BASE": "25000"}]

# --------------------------------------------------------------------------------------------- ports


@pytest.mark.parametrize("band", BANDS)
def test_both_launch_paths_get_the_same_block_for_a_job(band):
    for job in (1, 2, 77, 4242, 10**6 + 3):
        rendezvous = int(rank_env_from_slurm({**SRUN, **band, "SLURM_JOB_ID": str(job)})["MASTER_PORT"])
        ray_head = job_node_ports(job, [0, 1], band)[0]
        assert rendezvous == ray_head.base == job_port_base(job, band)


@pytest.mark.parametrize("band", BANDS)
def test_blocks_of_different_jobs_never_overlap_and_stay_below_the_ephemeral_range(band):
    floor = ephemeral_port_floor()
    start = int(band.get("RB_RAY_PORT_BASE", PORT_BASE))
    slots = (floor - start) // JOB_PORT_BLOCK
    owner: dict[int, int] = {}
    for job in range(slots):
        nodes = job_node_ports(job, [0, 1], band)  # two fake nodes on one address: both slots
        ports = [p for i, n in enumerate(nodes) for p in n.listening(head=i == 0)]
        base = job_port_base(job, band)
        assert len(ports) == len(set(ports))  # the two nodes' ports are apart too
        assert all(base <= p < base + JOB_PORT_BLOCK and start <= p < floor for p in ports)
        for p in ports:
            assert owner.setdefault(p, job) == job, f"port {p} of job {job} is job {owner[p]}'s too"
    # Job ids wrap around the band: equal modulo the number of blocks is the one way to share a block.
    assert job_port_base(slots + 5, band) == job_port_base(5, band)


def test_a_nodes_ports_are_its_block_and_the_head_has_five_more():
    node = node_ports(30000, 1)
    assert node.base == 30000 + NODE_PORT_BLOCK
    worker, head = node.listening(head=False), node.listening(head=True)
    assert head[:5] == [node.gcs, node.dashboard, node.client_server, node.autoscaler_metrics,
                        node.dashboard_metrics] and head[5:] == worker  # fmt: skip
    assert worker[0] == node.node_manager and worker[-1] == node.max_worker == node.base + NODE_PORT_BLOCK - 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RB_RAY_PORT_BASE": "http"}, "RB_RAY_PORT_BASE='http': accepted: a port number from 1024 to 65535"),
        ({"RB_RAY_PORT_BASE": "80"}, "RB_RAY_PORT_BASE='80': accepted"),
        ({"RB_RAY_PORT_BASE": "60000"}, "no room for a block of 256 ports between RB_RAY_PORT_BASE=60000"),
    ],
)
def test_a_bad_port_band_is_one_line_naming_it(env, message):
    with pytest.raises(UserError, match=message):
        job_port_base(1, env)


def test_more_nodes_on_one_address_than_a_job_block_holds_is_refused():
    with pytest.raises(UserError, match="3 of this job's nodes share one address; accepted: at most 2"):
        node_ports(20000, 2)


def test_busy_ports_sees_a_listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert busy_ports([port, port + 1]) in ([port], [port, port + 1])
    assert port not in busy_ports([port])


# ---------------------------------------------------------------------------------------- node discovery

SCONTROL_NODES = """\
NodeName=node1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=1 NodeAddr=127.0.0.1 NodeHostName=vm Version=22.05.8 \
OS=Linux 6.1 RealMemory=1 State=MIXED Reason=none [root@2024-01-01T00:00:00]
NodeName=node2 Arch=x86_64 NodeAddr=127.0.0.1 NodeHostName=vm Port=6819 State=MIXED
NodeName=gpu17 Arch=x86_64 State=IDLE
"""


def test_scontrol_node_records_give_address_and_host_name_defaulting_to_the_name():
    assert parse_node_records(SCONTROL_NODES) == {
        "node1": ("127.0.0.1", "vm"),
        "node2": ("127.0.0.1", "vm"),
        "gpu17": ("gpu17", "gpu17"),
    }


def test_nodes_are_ordered_head_first_and_numbered_per_address():
    records = parse_node_records(SCONTROL_NODES)
    nodes = order_nodes(["node1", "node2"], records, {"node1": "127.0.0.1", "node2": "127.0.0.1"}, "node2")
    assert nodes == [Node("node2", "127.0.0.1", "vm", 0), Node("node1", "127.0.0.1", "vm", 1)]
    real = {"a": ("a", "a.cluster"), "b": ("b", "b.cluster")}
    nodes = order_nodes(["a", "b"], real, {"a": "10.0.0.1", "b": "10.0.0.2"}, "a")
    assert [(n.name, n.ip, n.host, n.slot) for n in nodes] == [
        ("a", "10.0.0.1", "a.cluster", 0),
        ("b", "10.0.0.2", "b.cluster", 0),
    ]


@pytest.mark.parametrize(
    ("ips", "message"),
    [
        ({"a": "127.0.0.1", "b": "10.0.0.2"}, "a mix of loopback and other addresses"),
        ({"a": "127.0.0.2", "b": "127.0.0.2"}, "loopback nodes must use 127.0.0.1 exactly"),
    ],
)
def test_nodes_that_cannot_form_one_cluster_are_refused(ips, message):
    with pytest.raises(RuntimeError, match=message):
        order_nodes(["a", "b"], {"a": ("a", "a"), "b": ("b", "b")}, ips, "a")
    with pytest.raises(RuntimeError, match="scontrol knows no node c"):
        order_nodes(["a", "c"], {"a": ("a", "a")}, {"a": "10.0.0.1"}, "a")


@pytest.mark.parametrize(
    ("env", "gpus"),
    [
        ({"SLURM_GPUS_ON_NODE": "4"}, 4),
        ({"SLURM_GPUS_PER_TASK": "a100:2"}, 2),
        ({"SLURM_GPUS_PER_NODE": "8"}, 8),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, 0),
        ({}, 0),
    ],
)
def test_gpus_per_node_from_whichever_variable_slurm_sets(env, gpus):
    assert gpus_per_node(env) == gpus


def test_an_unreadable_gpu_count_is_one_line_naming_the_variable():
    with pytest.raises(UserError, match=r"SLURM_GPUS_ON_NODE='lots'; accepted: N or TYPE:N"):
        gpus_per_node({"SLURM_GPUS_ON_NODE": "lots"})


# ------------------------------------------------------------------------------------------------ token


def test_the_token_file_is_0600_whatever_the_umask_and_never_overwritten(tmp_path):
    old = os.umask(0)
    try:
        token = write_token(tmp_path / "auth_token")
    finally:
        os.umask(old)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(token.read_text()) == 64 and int(token.read_text(), 16)  # 256 random bits, as Ray makes them
    with pytest.raises(FileExistsError):
        write_token(token)  # a file someone else prepared is never reused


# ------------------------------------------------------------------------------------------- grid shape


def grid(tmp_path: Path, cluster: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\ncluster: {cluster}\npoints:\n  - {{arch: resnet50}}\n")
    return path


def test_a_grid_that_fits_the_allocation_is_returned_as_load_grid_reads_it(tmp_path):
    g = check_grid_fits(grid(tmp_path, "{nodes: 2, devices_per_node: 4, use_gpu: true}"), 2, 4, "n[1-2]")
    assert (g.name, g.cluster.nodes, g.cluster.devices_per_node) == ("g", 2, 4)
    # CPU grids need no GPUs: devices_per_node counts ranks there.
    check_grid_fits(grid(tmp_path, "{nodes: 1, devices_per_node: 4}"), 1, 0, "n1")


@pytest.mark.parametrize(
    ("cluster", "nodes", "gpus", "message"),
    [
        ("{nodes: 3}", 2, 0, "asks for cluster.nodes=3 but this job has 2 node(s) (n[1-2]); submit with --nodes=3"),
        ("{devices_per_node: 4, use_gpu: true}", 2, 2,
         "asks for cluster.devices_per_node=4 GPUs but this job has 2 GPU(s) per node; request them with"
         " --gpus-per-node=4"),
        ("{nodes: 0}", 2, 0, "cluster.nodes must be an integer ≥ 1, got 0"),  # load_grid's own check
        ("{nodez: 2}", 2, 0, "unknown key 'nodez'; did you mean 'nodes'"),
    ],
)  # fmt: skip
def test_a_grid_the_allocation_cannot_hold_is_refused_in_one_line(tmp_path, cluster, nodes, gpus, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_grid_fits(grid(tmp_path, cluster), nodes, gpus, "n[1-2]")


def test_the_grid_job_outside_slurm_fails_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert grid_job("g.yaml", ["--results", "r"], env={}) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("error: submit this with sbatch: sbatch slurm/ray-grid.sbatch "
                                             "GRID.yaml (no SLURM_JOB_ID)"), err  # fmt: skip
    assert list(tmp_path.iterdir()) == []
