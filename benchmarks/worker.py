"""`python -m benchmarks.worker`: a persistent measurement process (see benchmarks/procs.py).

Requests arrive as JSON lines on stdin, `{"op": …, "args": {…}}`; each gets one JSON line back,
`{"ok": true, "result": …}` or `{"ok": false, "error": …}`. Replies go to the process's original stdout,
which is kept for them alone: everything else printed here (DeepSpeed's logs, the trainer's banner) is
redirected to stderr, the worker's log file. Closing stdin ends the worker.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback

# The suite's own modules are imported inside the functions below, after `main` has moved stdout to the log:
# importing DeepSpeed prints, and a stray line on stdout would corrupt the reply channel.


def op_ready() -> dict:
    import torch

    return {"pid": os.getpid(), "threads": torch.get_num_threads()}


def op_run(spec: dict) -> dict:
    """One real run of the suite (`suite.run.run`, nothing written), as a launcher would start it."""
    import torch

    from suite.context import RunContext
    from suite.row import THROUGHPUT_COLUMNS
    from suite.run import run
    from suite.spec import RunSpec

    with tempfile.TemporaryDirectory(prefix="rb-bench-run-") as results:
        row = run(RunSpec.from_dict(spec), results, RunContext(write=False))
    if row["status"] != "ok":
        raise RuntimeError(f"run {row['run_id']} {row['status']}: {row['error']}")
    # What the suite's side reports: the row's timed-window numbers (suite/measure.py), nothing recomputed here.
    return {
        **{k: row[k] for k in ("status", "error", "mfu", *THROUGHPUT_COLUMNS)},
        "threads": torch.get_num_threads(),
    }


def op_bare(spec: dict) -> dict:
    from benchmarks.bare import bare_training
    from suite.spec import RunSpec

    return bare_training(RunSpec.from_dict(spec))


OPS = {"ready": op_ready, "run": op_run, "bare": op_bare}


def main() -> int:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to the log, never into the reply channel

    import suite.run  # noqa: F401  (the imports are the slow part: pay them before the first request)

    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"ok": True, "result": OPS[request["op"]](**request.get("args", {}))}
        except Exception as e:
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}"}
        replies.write(json.dumps(reply) + "\n")
    from suite.distributed import shutdown

    shutdown()  # a 2-rank worker's process group (see suite.distributed.shutdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
