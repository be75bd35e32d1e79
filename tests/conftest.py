"""Test-environment hygiene, in one place (not in each test).

Set before anything imports torch, DeepSpeed or Ray:
- one OpenMP thread per process: tests start several ranks on a 2-core machine;
- DeepSpeed on the CPU accelerator where there is no CUDA, with its compiled ops cached in the venv;
- Ray kept on 127.0.0.1 (../shared/TOOLCHAIN.md: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps every Ray service
  and Train's MASTER_ADDR on loopback here) with a fresh temp dir for this test session;
- dataset manifests that cannot live beside their data in a fresh cache directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Short, fresh Ray temp dir: Ray's socket paths must stay under 107 bytes, and a reused dir keeps the
# address of an earlier cluster (ray_current_cluster).
_RAY_TMP = tempfile.mkdtemp(prefix="rb-ray-", dir="/tmp")
os.environ["RAY_TMPDIR"] = _RAY_TMP
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)  # never attach to a cluster the tests did not start
# Dataset manifests of read-only test trees go here, not into the user's cache (suite/data/manifest.py).
_CACHE = tempfile.mkdtemp(prefix="rb-cache-", dir="/tmp")
os.environ["RESNET_BENCH_CACHE"] = _CACHE

from suite.env import apply_defaults  # noqa: E402

apply_defaults()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_RAY_TMP, ignore_errors=True)
    shutil.rmtree(_CACHE, ignore_errors=True)
