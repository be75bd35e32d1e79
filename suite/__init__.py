"""resnet-bench: ResNet-50/101/152 against ε-ResNet, measured as data-parallel DeepSpeed runs.

`suite` is the science (models, data, the training step, the measurement protocol, the result schema and the
report). It never imports Ray or Slurm; `launchers` turn run specs into processes.
"""

from suite.env import apply_defaults

__version__ = "0.1.0"

# DeepSpeed picks its accelerator when it is first imported, and every path to `import deepspeed` in this
# project goes through this package: the environment it needs is set here, before any of them (as
# launchers/__init__.py does for Ray).
apply_defaults()
