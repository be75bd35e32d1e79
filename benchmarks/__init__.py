"""`resnet-bench bench`: is the suite itself fast? Six side-by-side ratios, each with a goal (BENCHMARKS.md).

Every figure is a ratio of two sides measured interleaved in one invocation, several times, so that the load
other people put on a shared machine hits both sides alike; the median ratio is reported with its min–max.

Unlike `suite/`, this package may reach Ray, but only from the modules that launch grids (`grid_driver`) and
only inside the processes they start: importing `benchmarks` never imports Ray.
"""
