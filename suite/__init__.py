"""resnet-bench: ResNet-50/101/152 against ε-ResNet, measured as data-parallel DeepSpeed runs.

`suite` is the science (models, data, the training step, the measurement protocol, the result schema and the
report). It never imports Ray or Slurm; `launchers` turn run specs into processes.
"""

__version__ = "0.1.0"
