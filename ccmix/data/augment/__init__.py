"""Image augmentation: the policy tables, per-image PIL ops and their batched twins (geometry, colour, blur)."""
