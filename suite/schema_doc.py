"""results/README.md, generated from the schema (`resnet-bench schema --markdown`): the column reference with
units, and what the splits, the pruning and the reproducibility of the numbers mean."""

from __future__ import annotations

from suite.schema import CURVE_COLUMNS, RUN_COLUMNS, SCHEMA_VERSION, Column

README_INTRO = """# results/

Default output location of `resnet-bench`. Everything here except this file is generated and git-ignored.

```
results/<grid>/runs/<run_id>.parquet     one row per run (the latest attempt of that run id)
results/<grid>/curves/<run_id>.parquet   one row per run and epoch
results/<grid>/report.html, report.md    the comparison report
```

Files are written under a hidden temporary name and renamed into place, so any Parquet client
(`pyarrow.dataset`, DuckDB `read_parquet('results/<grid>/runs/*.parquet')`, Polars) sees only complete
files. This page is generated from `suite/schema.py` by `resnet-bench schema --markdown`; a test keeps
them equal.

"""

README_SPLITS = """## Splits and pruning

Every run uses three splits, and no number is selected on the split it is reported on.

| split | what it is | what reads it |
|---|---|---|
| train | the training images less the select split | the optimizer |
| select | `select_fraction` (default 0.1) of each class's training images, drawn with the run's seed (at least one per class, never a whole class); shards: the select shards `data shard` drew once, shared by every repeat; synthetic: its own stream | every decision: the ε discards, the post-hoc ranking, learning-rate restarts, time-to-target; the curves |
| test | imagefolder: the dataset's `val/`, every image once; shapes: its `val/` (2,100 images, so one run's 95 % interval is at most ±2 pp around 70 % top-1); synthetic: a separate stream | `top1`, `top5`, `top1_gated`, the pruning check, after training only |

**The deployed network is the one measured.** An ε-ResNet or post-hoc row's `top1`/`top5` are the pruned
network's on the test split; `top1_gated` is the network as trained (ε: gates live), `top1_select` the deployed
one on the select split.

**The discard rule.** An ε block is removed when its gate was off on every select batch of every rank, in eval
mode (the mode of deployment). A gated-off block computes relu(0·F + shortcut(x)), which is exactly what
replaces it, so removing such blocks changes no logit on the select split. What can still differ is a kept
block that some batch switches off (the gate is a max over the batch, so it depends on which images share a
batch) and, on the test split, a removed block whose gate a test batch switches on. `blocks_gate_mismatch` counts the ε blocks where either happened on at least one test
batch of any rank, and `prune_logit_max_abs_diff` is the largest logit difference the two networks show over
the test split: 0 (within float rounding) when no gate disagrees. For post-hoc rows it is what the purge (and
fine-tune) changed; for plain ResNet rows it is 0.

**Children copy their parent's decision.** A `scratch` row trains, from a fresh initialisation, the network its
`eps` parent (`parent_run_id`) was pruned to: the same `blocks_removed`, so the same `params_active`; nothing is
pruned after its training. A `posthoc` row with `purge_blocks: match` purges as many blocks as the parent
discarded (ranked on its own select split), re-estimates every BatchNorm's statistics on training batches, and
fine-tunes from a tenth of the peak learning rate. A child whose parent has no `ok` row writes a `failed` row
whose `error` names the parent.

**A post-hoc run purges the plain network the grid already trained.** Its training is the plain point's with
the same fields (`variant: resnet`, no ε, no purge). When the grid has that point and it finished `ok`, the
post-hoc run takes over its final checkpoint (`purged_from_run_id`) instead of training the same network a
second time: its curves are that training's, its throughput columns are null, and the purge, BatchNorm
re-estimate and fine-tune are its own. Without such a point it trains the network itself.

## Reproducibility

On one machine the same spec and seed give the same numbers bit for bit, under Ray and under torchrun
(tests/test_reproducible.py): the data order and augmentation are functions of (seed, epoch, index), each rank
runs a fixed number of intra-op threads, and gloo reduces in a fixed order. `deterministic` says so per row; on
GPUs it is false unless deterministic algorithms are on (cuDNN's backward convolutions add with atomics in a
varying order). Across machines the numbers are not the same: another CPU runs other oneDNN/MKL kernels
(`math_isa`), or the same ones with another thread count (`threads_per_rank`), which round differently, and
training amplifies those last-bit differences. Compare configurations over repeats, never single runs.
"""


def _md_row(c: Column) -> str:
    doc = c.doc.replace("|", "\\|")  # a bare pipe would split the Markdown table cell
    return f"| `{c.name}` | {c.type}{'' if c.nullable else ', required'} | {doc} |"


def schema_markdown() -> str:
    """`results/README.md`: the column reference, generated so it cannot drift from the schema."""
    lines = [
        README_INTRO.rstrip("\n"),
        "",
        README_SPLITS.rstrip("\n"),
        "",
        f"## Run table (`runs/*.parquet`, schema version {SCHEMA_VERSION})",
        "",
        "One row per run: the latest attempt of each `run_id`.",
    ]
    for group, cols in RUN_COLUMNS:
        lines += ["", f"### {group}", "", "| column | type | meaning |", "|---|---|---|"]
        lines += [_md_row(c) for c in cols]
    lines += [
        "",
        "## Curve table (`curves/*.parquet`)",
        "",
        "One row per run and epoch.",
        "",
        "| column | type | meaning |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{c.name}` | {c.type}{'' if c.nullable else ', required'} | {c.doc} |" for c in CURVE_COLUMNS
    ]
    return "\n".join(lines) + "\n"
