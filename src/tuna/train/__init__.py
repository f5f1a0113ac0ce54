"""The training loop, its checkpoints, and the device/precision setup."""
