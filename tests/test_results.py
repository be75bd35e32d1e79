"""The result tables: schema round trip, independent readers, atomic writes, names, versions."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from suite.errors import UserError
from suite.results import check_name, check_results_dir, finished_run_ids, read_curves, read_runs, write_run
from suite.schema import CURVE_SCHEMA, RUN_SCHEMA, SCHEMA_VERSION
from suite.schema_doc import schema_markdown
from suite.spec import RunSpec
from tests.rows import curve, ok_row

REQUIRED_RUN_COLUMNS = [
    "run_id",
    "grid",
    "schema_version",
    "arch",
    "variant",
    "epsilon",
    "world_size",
    "precision",
    "zero_stage",
    "global_batch",
    "params_total",
    "params_active",
    "blocks_total",
    "blocks_discarded",
    "flops_per_image",
    "top1",
    "top5",
    "images_per_s",
    "images_per_s_compute",
    "data_wait_frac",
    "step_ms_p50",
    "mfu",
    "time_to_target_s",
    "status",
    "error",
    "restarts",
    "started_at",
    "ended_at",
    "seed",
    "device_name",
    "hosts",
    "slurm_job_id",
    "git_sha",
    "torch_version",
    "deepspeed_version",
]


def test_schema_has_the_contract_columns_with_exact_integer_types():
    names = RUN_SCHEMA.names
    assert len(names) == len(set(names))
    for col in REQUIRED_RUN_COLUMNS:
        assert col in names, col
    for col in ("params_total", "params_active", "flops_per_image", "timed_steps", "peak_memory_bytes"):
        assert RUN_SCHEMA.field(col).type == pa.int64()


def test_results_readme_is_generated_from_the_schema():
    from pathlib import Path

    readme = Path(__file__).resolve().parent.parent / "results" / "README.md"
    assert readme.read_text() == schema_markdown(), (
        "regenerate: resnet-bench schema --markdown > results/README.md"
    )


def test_round_trip_with_pyarrow_and_duckdb(tmp_path):
    spec = RunSpec(variant="eps", epsilon=0.5, epochs=2, width=8, grid="g1")  # ε gate on in the second epoch
    row = ok_row(spec)
    write_run(tmp_path, row, [curve(0, epsilon=None), curve(1, epsilon=0.5)])
    runs = read_runs(tmp_path, "g1")
    assert runs.schema.equals(RUN_SCHEMA, check_metadata=False)
    got = runs.to_pylist()[0]
    for key in ("run_id", "params_total", "blocks_discarded_per_stage", "top1", "started_at", "epsilon"):
        assert got[key] == row[key], key
    assert got["schema_version"] == SCHEMA_VERSION and got["attempts"] == 0
    assert read_curves(tmp_path, "g1").num_rows == 2
    # An independent client reads the same files with the declared types.
    con = duckdb.connect()
    runs_glob, curves_glob = tmp_path / "g1/runs/*.parquet", tmp_path / "g1/curves/*.parquet"
    params, variant, types = con.execute(
        f"SELECT params_active, variant, typeof(params_total) FROM read_parquet('{runs_glob}')"
    ).fetchone()
    assert (params, variant, types) == (row["params_active"], "eps", "BIGINT")
    eps = con.execute(f"SELECT epsilon FROM read_parquet('{curves_glob}') ORDER BY epoch").fetchall()
    assert eps == [(None,), (0.5,)]


def test_rewrite_keeps_one_row_and_counts_attempts(tmp_path):
    spec = RunSpec(grid="g")
    write_run(tmp_path, ok_row(spec, status="failed", error="boom"), [])
    assert finished_run_ids(tmp_path, "g") == set()
    write_run(tmp_path, ok_row(spec), [curve(0)])
    runs = read_runs(tmp_path, "g").to_pylist()
    assert len(runs) == 1 and runs[0]["attempts"] == 1 and runs[0]["status"] == "ok"
    assert finished_run_ids(tmp_path, "g") == {spec.run_id}


def test_a_row_of_the_wrong_type_is_refused_and_nothing_written(tmp_path):
    row = ok_row(RunSpec(grid="g"), params_total="many")
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_run(tmp_path, row, [])
    assert not list(tmp_path.rglob("*.parquet"))


KILL_BETWEEN_WRITE_AND_RENAME = """
import os, signal, sys
from suite.results import write_run
from suite.spec import RunSpec
from tests.rows import ok_row
def die(tmp):
    assert tmp.exists() and tmp.name.startswith(".")
    os.kill(os.getpid(), signal.SIGKILL)
write_run(sys.argv[1], ok_row(RunSpec(grid="g")), [], before_rename=die)
"""


def test_killed_between_write_and_rename_leaves_nothing_visible(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", KILL_BETWEEN_WRITE_AND_RENAME, str(tmp_path)],
        cwd=os.path.dirname(os.path.dirname(__file__)),
        timeout=120,
    )
    assert proc.returncode == -9
    assert read_runs(tmp_path).num_rows == 0 and read_curves(tmp_path).num_rows == 0
    visible = [p for p in tmp_path.rglob("*.parquet") if not p.name.startswith(".")]
    assert visible == []


def test_other_schema_version_is_a_clear_error(tmp_path):
    runs = tmp_path / "g" / "runs"
    runs.mkdir(parents=True)
    table = pa.table({"run_id": ["x"]}).replace_schema_metadata({"resnet_bench_schema_version": "99"})
    pq.write_table(table, runs / "x.parquet")
    with pytest.raises(
        UserError, match=f"schema version 99; this resnet-bench reads version {SCHEMA_VERSION}"
    ):
        read_runs(tmp_path, "g")


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 200, "a..b"])
def test_unsafe_names_cannot_leave_the_results_dir(name, tmp_path):
    with pytest.raises(UserError, match="not a safe name"):
        check_name("grid name", name)
    with pytest.raises(UserError):
        RunSpec(grid=name)


def test_results_dir_checks(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_results_dir(f / "sub")
    check_results_dir(tmp_path / "new" / "dir")  # to be created: fine
    assert CURVE_SCHEMA.field("epoch").type == pa.int32()
