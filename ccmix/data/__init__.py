"""Data: long-tailed datasets, sample streams, views and the training pipelines."""
