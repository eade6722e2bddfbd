"""The run's numerics switches: deterministic kernels, cuDNN autotuning and TF32, set from the config.

``deterministic=true`` asks torch for deterministic algorithms everywhere (``warn_only``:
an operator without one warns instead of stopping the run); on CUDA also deterministic
cuDNN convolutions without autotuning, and a fixed cuBLAS workspace
(``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which cuBLAS needs for reproducible matmuls and
reads when its first handle is made). ``deterministic=false`` on CUDA lets cuDNN time its
convolution algorithms and keep the fastest (``cudnn.benchmark``). ``tf32`` sets TF32
for CUDA convolutions and matmuls explicitly, whatever torch's defaults are.
"""

from __future__ import annotations

import os
import warnings

import torch

from ccmix.config.fields import TrainConfig

CUBLAS_WORKSPACE = ":4096:8"  # 8 buffers of 4 MiB: the setting cuBLAS documents for reproducible results


def request_deterministic_cublas(deterministic: bool) -> None:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` to ``CUBLAS_WORKSPACE`` when ``deterministic`` and it is not set; call it
    before CUDA starts. A value already set is kept. Warns when CUDA started without it: it may come too late."""
    if not deterministic or os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        return
    if torch.cuda.is_initialized():
        warnings.warn("deterministic=true but CUBLAS_WORKSPACE_CONFIG was not set before CUDA started, so cuBLAS "
                      f"matmuls may not be reproducible; set CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} in the "
                      "environment", UserWarning, stacklevel=2)
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE


def apply_numerics(config: TrainConfig, device) -> None:
    """Set torch's global numerics switches for training ``config`` on ``device`` (anything with ``.type``).

    Everywhere: ``torch.use_deterministic_algorithms(config.deterministic, warn_only=True)``. On CUDA
    also ``cudnn.deterministic = deterministic``, ``cudnn.benchmark = not deterministic``, the cuBLAS
    workspace (``request_deterministic_cublas``) and ``cuda.matmul.allow_tf32 = cudnn.allow_tf32 = tf32``.
    """
    torch.use_deterministic_algorithms(bool(config.deterministic), warn_only=True)
    if device.type != "cuda":
        return
    request_deterministic_cublas(config.deterministic)
    torch.backends.cudnn.deterministic = bool(config.deterministic)
    torch.backends.cudnn.benchmark = not config.deterministic
    torch.backends.cuda.matmul.allow_tf32 = bool(config.tf32)
    torch.backends.cudnn.allow_tf32 = bool(config.tf32)


__all__ = ["CUBLAS_WORKSPACE", "apply_numerics", "request_deterministic_cublas"]
