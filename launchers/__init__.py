"""How run specs become processes: Ray Tune/Train for grids, torchrun/srun for one configuration."""

import os

# Ray reads this once, when `ray` is first imported (ray/_private/ray_constants.py), and with it unset a
# local cluster resolves 127.0.0.1 to the machine's routable address and listens on every interface
# (../shared/TOOLCHAIN.md). Every path to `import ray` in this project goes through this package, so it is set
# here, before any of them; a cluster given by RAY_ADDRESS keeps whatever its operator chose.
if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
