"""Training pipelines: per-sample (classic, DataLoader workers) and batched (fast)."""
