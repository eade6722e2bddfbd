"""Random streams of a run: one seed-mixing rule, and the global generators saved with a checkpoint.

Every random draw of training that must be reproducible on resume (the two sample
streams of Contrastive CutMix, Pan et al., IEEE TIP 2024; the augmentation draws; the
CutMix decision and boxes of Yun et al., ICCV 2019) comes from a generator seeded by
``mix_seed(seed, epoch, ...)``, so an epoch depends only on the run's seed and the epoch.
The per-image views of the classic pipeline draw from torch's global CPU generator
(torchvision transforms know no other), seeded per item by ``seeded_torch_draws``, so
they depend on (seed, epoch, position in the epoch) and not on which process builds
them. The global generators (Python, NumPy, torch, CUDA) are saved with each checkpoint
and restored on resume, for whatever else draws from them.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch

# Named streams of one epoch: a stream number is one of the parts mixed into its seed.
CUTMIX_STREAM = 2


def mix_seed(*parts: int) -> int:
    """Return a 63-bit seed that is a deterministic hash (SHA-256) of the integers ``parts``."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def numpy_generator(*parts: int) -> np.random.Generator:
    """Return a NumPy Generator seeded with ``mix_seed(*parts)``."""
    return np.random.default_rng(mix_seed(*parts))


def torch_generator(*parts: int) -> torch.Generator:
    """Return a CPU torch.Generator seeded with ``mix_seed(*parts)``."""
    return torch.Generator().manual_seed(mix_seed(*parts))


@contextlib.contextmanager
def seeded_torch_draws(seed: int) -> Iterator[None]:
    """Run the block with torch's global CPU generator seeded with ``seed``, then put its state back.

    The caller's stream is left exactly where it was, so the block's draws depend on ``seed``
    alone and nothing after the block depends on them. Only the CPU generator is touched
    (``torch.manual_seed`` would also reseed every CUDA generator, at ~50x the cost); about
    3 microseconds a call.
    """
    generator = torch.default_generator
    saved = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(saved)


def rng_state() -> dict:
    """Return the states of the global Python, NumPy, torch (and CUDA) generators, as checkpoint data."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # tensors and plain numbers only, so the checkpoint loads with weights_only=True
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *map(float, numpy_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Put the global generators back where ``rng_state()`` found them."""
    random.setstate(_as_tuple(state["python"]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(position), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        # a run may resume on a machine with another number of GPUs than the one that saved it
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


def seed_everything(seed: int) -> None:
    """Seed the global Python, NumPy and torch generators with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


__all__ = ["CUTMIX_STREAM", "mix_seed", "numpy_generator", "torch_generator", "seeded_torch_draws", "rng_state",
           "restore_rng_state", "seed_everything"]
