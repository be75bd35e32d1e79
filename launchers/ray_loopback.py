"""`ray start` for a second Ray node on 127.0.0.1: fake Slurm nodes sharing one host (tests/slurm_cluster.py).

Used by launchers/slurm_ray.py instead of `ray start` only when every node of the job is 127.0.0.1, which no
real cluster is (its nodes need addresses the others can reach), so production never runs this.

Why a patch of Ray's internals is needed for them (Ray 2.60, ray/scripts/scripts.py and
ray/_private/services.py): Ray binds its services to 127.0.0.1 only when the node IP is exactly 127.0.0.1,
but `ray start` passes --node-ip-address through `services.resolve_ip_for_localhost`, which swaps a loopback
address for the machine's routable one unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 — and with that 0,
`ray start --address` (a worker node) refuses to run ("Multi-node Ray clusters are not supported on Windows
and OSX"). No option lifts both; these two assignments do, in this one process, so that a test's second
node stays on loopback like the first.
"""

from __future__ import annotations

import sys

from ray._private import ray_constants, services
from ray.scripts.scripts import main


def loopback_ray(argv: list[str]) -> int:
    ray_constants.ENABLE_RAY_CLUSTER = True  # else `ray start --address` aborts
    services.resolve_ip_for_localhost = lambda address: address  # keep --node-ip-address/--address as given
    sys.argv = ["ray", *argv]
    return main()


if __name__ == "__main__":
    sys.exit(loopback_ray(sys.argv[1:]))
