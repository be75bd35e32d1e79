"""Writing and reading the result tables: one Parquet file per run, written atomically.

Layout: `<results>/<grid>/runs/<run_id>.parquet` (one row) and `<results>/<grid>/curves/<run_id>.parquet`.
A file is written under a hidden temporary name in the same directory and renamed into place, so a reader
sees either the previous complete file or the new complete file, never a partial one (rename is atomic on
POSIX file systems). Readers ignore hidden files, which is also pyarrow.dataset's default. Re-running a
`run_id` replaces its file: the table keeps the latest attempt and counts the earlier ones in `attempts`.
The curves are written before the run row, so a run row always has its curves.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from suite.errors import UserError, check, suggest
from suite.files import write_atomic
from suite.schema import CURVE_SCHEMA, RUN_SCHEMA, SCHEMA_VERSION
from suite.vocab import FINISHED

# Used with fullmatch: a `$` anchor would let a trailing newline into a path component.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(kind: str, name: str) -> str:
    """Grid names and run ids become path components: no separators, no `..`, nothing hidden."""
    check(
        isinstance(name, str) and bool(SAFE_NAME.fullmatch(name)) and ".." not in name,
        f"{kind} {name!r} is not a safe name; accepted: letters, digits, '.', '_', '-' (max 128, no '..', "
        "not starting with '.')",
    )
    return name


def grid_dir(results: str | Path, grid: str) -> Path:
    return Path(results) / check_name("grid name", grid)


def check_results_dir(results: str | Path) -> Path:
    """Fail early, with the path, when results cannot be written there."""
    path = Path(results)
    for p in (path, *path.parents):
        if p.exists():
            check(
                p.is_dir(), f"results path {str(p)!r} is a file; accepted: a directory (or a path to create)"
            )
            check(os.access(p, os.W_OK | os.X_OK), f"results directory {str(p)!r} is not writable")
            break
    return path


def _only_columns(rows: list[dict], schema: pa.Schema, table: str) -> None:
    """pyarrow drops keys that are not columns without a word: a misspelt column would lose its value."""
    for row in rows:
        for key in row:
            if key not in schema.names:
                hint = suggest(key, schema.names, otherwise="accepted: the columns in results/README.md")
                raise UserError(f"{table} row has {key!r}, which is not a column; {hint}")


def _required_present(table: pa.Table, name: str) -> None:
    """pyarrow enforces non-nullable fields only inside write_table: checked before the first file lands,
    so a refused run row never leaves its curves behind."""
    for field in table.schema:
        if not field.nullable and table.column(field.name).null_count:
            raise UserError(f"{name} row lacks the required column {field.name!r}")


def remove_temporaries(results: str | Path, grid: str) -> list[Path]:
    """Remove the hidden temporaries of writers killed between write and rename (their `finally` never ran).

    Only safe when no writer of the grid is running: the caller knows that, this function cannot.
    """
    base = grid_dir(results, grid)
    stale = [p for table in ("runs", "curves") for p in (base / table).glob(".*.parquet.*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_run(results: str | Path, row: dict, curves: list[dict], *, before_rename=None) -> Path:
    """Validate `row` and `curves` against the schema and write both atomically; returns the run file."""
    _only_columns([row], RUN_SCHEMA, "run")
    _only_columns(curves, CURVE_SCHEMA, "curve")
    grid, run_id = check_name("grid name", row["grid"]), check_name("run id", row["run_id"])
    base = grid_dir(results, grid)
    run_path = base / "runs" / f"{run_id}.parquet"
    row = {**row, "schema_version": SCHEMA_VERSION}
    if run_path.exists():
        previous = pq.read_table(run_path, columns=["attempts"]).column("attempts")[0].as_py()
        row["attempts"] = previous + 1
    row.setdefault("attempts", 0)
    run_table = pa.Table.from_pylist([row], schema=RUN_SCHEMA)
    curve_rows = [{**c, "run_id": run_id, "grid": grid, "schema_version": SCHEMA_VERSION} for c in curves]
    curve_table = pa.Table.from_pylist(curve_rows, schema=CURVE_SCHEMA)
    _required_present(run_table, "run")
    _required_present(curve_table, "curve")
    for table, path in ((curve_table, base / "curves" / f"{run_id}.parquet"), (run_table, run_path)):
        write_atomic(path, lambda tmp, table=table: pq.write_table(table, tmp), before_rename=before_rename)
    return run_path


def _read(directory: Path, schema: pa.Schema) -> pa.Table:
    return _read_files(sorted(p for p in directory.glob("*.parquet") if not p.name.startswith(".")), schema)


def _read_files(files: list[Path], schema: pa.Schema) -> pa.Table:
    if not files:
        return schema.empty_table()
    for f in files:
        try:
            metadata = pq.read_schema(f).metadata or {}
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(
                f"{f} is not a readable Parquet file ({e}); accepted: files written by resnet-bench"
            ) from None
        version = metadata.get(b"resnet_bench_schema_version", b"?").decode()
        if version != str(SCHEMA_VERSION):
            raise UserError(
                f"{f} has result schema version {version}; this resnet-bench reads version {SCHEMA_VERSION}"
            )
    return ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table()


def _grid_dirs(results: str | Path, grid: str | None) -> list[Path]:
    if grid:
        return [grid_dir(results, grid)]
    root = Path(results)
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _read_all(results: str | Path, grid: str | None, table: str, schema: pa.Schema) -> pa.Table:
    tables = [_read(g / table, schema) for g in _grid_dirs(results, grid) if (g / table).is_dir()]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_runs(results: str | Path, grid: str | None = None) -> pa.Table:
    """Run rows of one grid, or of every grid under `results`."""
    return _read_all(results, grid, "runs", RUN_SCHEMA)


def read_curves(results: str | Path, grid: str | None = None) -> pa.Table:
    """Per-epoch curve rows of one grid, or of every grid under `results`."""
    return _read_all(results, grid, "curves", CURVE_SCHEMA)


def read_run(results: str | Path, grid: str, run_id: str) -> dict | None:
    """The row of one run, or None if it has none yet."""
    path = grid_dir(results, grid) / "runs" / f"{check_name('run id', run_id)}.parquet"
    if not path.exists():
        return None
    return _read_files([path], RUN_SCHEMA).to_pylist()[0]


def finished_run_ids(results: str | Path, grid: str) -> set[str]:
    """Run ids whose latest attempt finished (ok or diverged): a re-submitted grid skips them."""
    runs_dir = grid_dir(results, grid) / "runs"
    if not runs_dir.is_dir():
        return set()
    table = _read(runs_dir, RUN_SCHEMA).select(["run_id", "status"]).to_pylist()
    return {r["run_id"] for r in table if r["status"] in FINISHED}
