"""How run specs become processes: Ray Tune/Train for grids, torchrun/srun for one configuration."""
