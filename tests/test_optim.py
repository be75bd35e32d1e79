"""suite/optim.py: the learning-rate schedule, with and without ε-ResNet's adaptive restart."""

from __future__ import annotations

import math

import pytest

from suite.optim import Schedule

PER_EPOCH = 10  # optimizer steps per epoch
EPOCHS = 100
TOTAL = EPOCHS * PER_EPOCH


def schedule(kind: str) -> Schedule:
    return Schedule(
        total_steps=TOTAL,
        warmup_steps=5 * PER_EPOCH,
        kind=kind,
        steps_per_epoch=PER_EPOCH,
        milestones=(30, 60, 80),
        gamma=0.1,
    )


def walk(sched: Schedule, restart_at: int | None) -> list[float]:
    """The multiplier at every step, with `restart` called when that step comes, as the trainer does."""
    out = []
    for step in range(TOTAL):
        if step == restart_at:
            sched.restart(step)
        out.append(sched(step))
    return out


@pytest.mark.parametrize("kind", ["step", "cosine"])
def test_a_restart_changes_nothing_before_it_and_resets_to_the_peak(kind):
    restart = 90 * PER_EPOCH
    plain, restarted = walk(schedule(kind), None), walk(schedule(kind), restart)
    assert restarted[:restart] == plain[:restart]
    assert restarted[restart] == 1.0


def test_a_late_step_restart_decays_again_before_the_end():
    # Restart at epoch 90 of 100: the milestones at 30/60/80 % of the run fall at 30/60/80 % of the 10 epochs
    # left, i.e. epochs 93, 96 and 98, so the run ends on the fully decayed rate rather than at its peak.
    restart = 90 * PER_EPOCH
    lr = walk(schedule("step"), restart)
    assert lr[restart - 1] == pytest.approx(1e-3)  # the original schedule had decayed three times
    drops = [s for s in range(restart + 1, TOTAL) if lr[s] < lr[s - 1]]
    assert drops == [93 * PER_EPOCH, 96 * PER_EPOCH, 98 * PER_EPOCH]
    assert lr[-1] == pytest.approx(1e-3) and lr[-1] < 1.0


def test_cosine_restarts_over_the_remaining_steps():
    restart = 90 * PER_EPOCH
    lr = walk(schedule("cosine"), restart)
    assert lr[restart + (TOTAL - restart) // 2] == pytest.approx(0.5)
    assert lr[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * (TOTAL - 1 - restart) / (TOTAL - restart))))


def test_warmup_is_linear_and_runs_only_once():
    lr = walk(schedule("step"), None)
    assert lr[: 5 * PER_EPOCH] == [(s + 1) / (5 * PER_EPOCH) for s in range(5 * PER_EPOCH)]
    assert lr[5 * PER_EPOCH] == 1.0


def test_step_milestones_are_epochs_from_the_start_warmup_included():
    lr = walk(schedule("step"), None)
    drops = [s for s in range(1, TOTAL) if lr[s] < lr[s - 1]]
    assert drops == [30 * PER_EPOCH, 60 * PER_EPOCH, 80 * PER_EPOCH]
