"""Data backends behind one signature: synthetic tensors, the ImageNet folder layout, and a generated shapes set.

`preflight.prepare_data` is the preflight: it decides every "your data is wrong" case as a one-line
`UserError` before a model is built, and returns a `config.DatasetInfo` that carries what ranks need (for
image folders: the whole index), so the dataset is listed and checked once per run. `loaders.build_loaders` then gives each rank
its micro-batches from that index: a disjoint, reshuffled-per-epoch shard of the training split, and disjoint
shards of the select split (held out from the training images, for every decision) and of the test split (the
val folder, reported) that, summed over ranks, count every image exactly once.

Modules: `registry` (backend name → module), `config` (`DataConfig`, `DatasetInfo`, `data_config`),
`preflight`, `loaders`, `decode` (the fused decode and crops), and one module per backend: `synthetic`,
`imagefolder` (the folder scan, the one place a directory is listed), `shapes` (with its generator).

This file imports nothing on purpose: `suite/spec.py` imports `suite.data.registry` for the backend names, and
Python runs this file first; importing the loaders here would make every spec import load the data pipeline.
Nothing in the package imports Ray or Slurm (../shared/DESIGN.md: `suite/` owns the science only).
"""
