"""Training engine shared by stage 1 and stage 2, checkpoints, devices, evaluation of runs."""
