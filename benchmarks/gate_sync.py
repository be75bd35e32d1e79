"""`gate_sync`: what ε-ResNet's gate costs a data-parallel step, with each of the two gate_sync settings.

Three sides on the same 2-rank worker group (gloo, one thread per rank, synthetic data), interleaved A B C,
C B A, …: the plain ResNet, ε-ResNet with `gate_sync: step` (an all-reduce of s in every gated block's forward
pass, on the critical path) and with `gate_sync: local` (each rank gates on its own shard; one fused
all-reduce of the bookkeeping per step). The ε sides gate from the first step (no ε warm-up), with its side
head, as ε-ResNet trains. The ratio is ε-ResNet (local) ÷ the plain ResNet, in timed-window images/s.
"""

from __future__ import annotations

from benchmarks.session import REQUEST_TIMEOUT_S, Session
from benchmarks.stats import Goal, paired_ratios, result, spread
from benchmarks.training import _same_threads, _spread_of

GOAL = Goal(">=", 0.95)
EPSILON = 0.5  # the speed does not depend on which blocks are off: gated-off branches are still computed


def gate_sync(session: Session) -> dict:
    preset = session.preset
    plain = preset.train_spec(devices_per_node=2)
    eps = {**plain, "variant": "eps", "epsilon": EPSILON, "eps_warmup_epochs": 0}
    specs = {"resnet": plain, "step": {**eps, "gate_sync": "step"}, "local": {**eps, "gate_sync": "local"}}
    session.start_workers(["suite2"])
    ranks = session.worker("suite2")
    got: dict[str, list[dict]] = {side: [] for side in specs}
    for i in range(preset.repetitions):
        order = list(specs) if i % 2 == 0 else list(reversed(specs))
        for side in order:
            got[side].append(ranks.request("run", REQUEST_TIMEOUT_S, spec=specs[side]))
    if {r["world_size"] for side in got.values() for r in side} != {2}:
        raise RuntimeError("a side did not run on 2 ranks")
    threads = _same_threads(*got.values())

    def ratios(side: str) -> list[float]:
        return paired_ratios(
            [r["images_per_s"] for r in got[side]], [r["images_per_s"] for r in got["resnet"]]
        )

    step = spread(ratios("step"))
    return result(
        ratios("local"),
        GOAL,
        details={
            "step_vs_resnet": {"median": step.median, "min": step.lo, "max": step.hi},
            **{f"{side}_images_per_s": _spread_of(got[side], "images_per_s") for side in specs},
            **{f"{side}_step_ms_p50": _spread_of(got[side], "step_ms_p50") for side in specs},
            "threads_per_rank": threads[0],
            "backend": "gloo",
            "config": specs["local"],
        },
    )
