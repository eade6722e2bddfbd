"""Notebook views: figures, the sample galleries and the CutMix explorer widgets."""
