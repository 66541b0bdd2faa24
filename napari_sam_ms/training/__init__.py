"""Training SAM in MindSpore: synthetic data, simulated prompts, losses, the training loop,
fine-tuning and evaluation. Nothing here imports Qt or napari."""
