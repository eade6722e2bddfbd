"""The method: losses, the mixers (CutMix), semantic labels, the training step and the shot metrics."""
