"""The GPU knobs (`channels_last`, `cudnn_benchmark`, `compile`): accepted everywhere, applied where they mean
something, recorded in the row, and refused with the reason where they cannot work."""

from __future__ import annotations

import pytest

from suite.errors import UserError
from suite.spec import RunSpec
from tests.test_train import only_row, run_one, write_config


def test_a_cpu_run_with_every_knob_is_ok_and_records_what_took_effect(tmp_path):
    knobs = {
        "channels_last": True,
        "cudnn_benchmark": True,
        "compile": True,
        "epochs": 1,
        "steps_per_epoch": 3,
    }
    proc = run_one(tmp_path, write_config(tmp_path, **knobs), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = only_row(tmp_path)
    assert row["status"] == "ok" and row["images_per_s"] > 0
    # NHWC and torch.compile work on a CPU; cuDNN autotuning has nothing to tune there.
    assert (row["channels_last"], row["compile"], row["cudnn_benchmark"]) == (True, True, False)


def test_compile_is_refused_for_the_eps_gate_with_the_reason():
    with pytest.raises(UserError, match="compile: true with variant 'eps': the ε gate all-reduces"):
        RunSpec(variant="eps", epsilon=0.5, compile=True)
    assert RunSpec(variant="scratch", epsilon=0.5, compile=True).compile  # a child has no gate
