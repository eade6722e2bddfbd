"""Checkpoints as plain data: atomic saves, ``weights_only`` loads, checksums, clear errors.

A checkpoint of a Contrastive CutMix run (Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024) is a dict of
tensors, numbers, strings, lists and dicts: model, optimizer (momentum buffers),
epoch, best metrics, metric history and every random state. There is no
scheduler state to keep: the learning rate is a pure function of the epoch
(``ccmix.method.step.learning_rate``).

Files are always loaded with ``torch.load(..., weights_only=True)``, so a file
carrying a pickled object that would run code is refused before anything in it
runs. Each checkpoint also stores a SHA-256 digest of its own content, so a
damaged file that still unpickles (flipped or zeroed bytes inside a tensor) is
reported instead of silently resuming from wrong weights.

Saving writes the new file completely to a temporary sibling first; only then is
the old ``last.pt`` renamed to ``previous.pt`` and the new file renamed into
place. A process killed at any moment therefore leaves a complete ``last.pt`` or,
for the instant between the two renames, a complete ``previous.pt``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from pathlib import Path

import torch

from ccmix.errors import ShownAsSentence
from ccmix.io import atomic_write

FORMAT = "ccmix.train.checkpoint/1"
LAST = "last.pt"
PREVIOUS = "previous.pt"
BEST = "best.pt"
DAMAGED_SUFFIX = ".damaged"  # a damaged last.pt is set aside under this suffix once an older one is used
REQUIRED_KEYS = ("config", "epoch", "num_classes", "model")
_DIGEST_KEY = "digest"


class CheckpointError(ShownAsSentence, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


class CheckpointWarning(UserWarning):
    """A damaged or missing checkpoint was skipped in favour of an older, readable one."""


# --------------------------------------------------------------------------- content digest


def content_digest(payload: dict) -> str:
    """Return the SHA-256 hex digest of a checkpoint payload's content (tensor bytes, shapes, dtypes, values).

    The ``digest`` entry itself is left out; dict order counts (it survives saving and loading).
    """
    hasher = hashlib.sha256()
    _feed(hasher, {key: value for key, value in payload.items() if key != _DIGEST_KEY})
    return hasher.hexdigest()


def _feed(hasher, value) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        hasher.update(f"T{flat.dtype}{tuple(value.shape)}|".encode())
        hasher.update(flat.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        hasher.update(f"D{len(value)}|".encode())
        for key, item in value.items():
            _feed(hasher, key)
            _feed(hasher, item)
    elif isinstance(value, (list, tuple)):
        hasher.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}|".encode())
        for item in value:
            _feed(hasher, item)
    else:  # str, int, float, bool, None: repr is exact (floats round-trip)
        hasher.update(f"{type(value).__name__}:{value!r}|".encode())


# --------------------------------------------------------------------------- save


def save_checkpoint(path: str | os.PathLike, payload: dict, keep_previous: bool = False) -> Path:
    """Return ``path`` after saving ``payload`` atomically; ``keep_previous`` keeps the old file as previous.pt.

    The new file is complete on disk before the old one is renamed to previous.pt, so a
    readable checkpoint exists at every instant.
    """
    target = Path(path)
    data = dict(payload, format=FORMAT)
    data.pop(_DIGEST_KEY, None)
    data[_DIGEST_KEY] = content_digest(data)

    def keep_old_as_previous() -> None:
        if keep_previous and target.exists():
            os.replace(target, target.with_name(PREVIOUS))

    return atomic_write(target, lambda handle: torch.save(data, handle), before_replace=keep_old_as_previous)


# --------------------------------------------------------------------------- load


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Return the checkpoint dict at ``path``, loaded as data only; CheckpointError when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(_not_a_file_sentence(path))
    size = path.stat().st_size
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was refused: it holds a pickled object that is not plain data "
                f"({refused.group(1)}) and loading it could run code, so nothing in it was run; "
                "load only checkpoints that ccmix wrote"
            ) from None
        raise CheckpointError(_damaged_sentence(path, size, error)) from None
    except Exception as error:  # torch raises RuntimeError, EOFError, OSError, KeyError, ... on damaged files
        raise CheckpointError(_damaged_sentence(path, size, error)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a ccmix checkpoint (expected a dict with format {FORMAT!r})"
        )
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete: it lacks {', '.join(missing)}")
    if _DIGEST_KEY in payload and payload[_DIGEST_KEY] != content_digest(payload):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: its content does not match the checksum saved with it "
            "(the file was damaged after it was written)"
        )
    problem = inconsistency(payload)
    if problem is not None:
        raise CheckpointError(f"checkpoint {str(path)!r} is inconsistent: {problem}")
    if torch.device(map_location if map_location is not None else "cpu").type != "cpu":
        payload = _to_device(payload, torch.device(map_location))
    return payload


def _not_a_file_sentence(path: Path) -> str:
    """Return why ``path``, which is not a regular file, cannot be a checkpoint: missing, a folder, or another kind."""
    if path.is_dir():
        held = [name for name in (LAST, BEST) if (path / name).is_file()]
        if held:  # a run folder: name the checkpoints it holds
            choices = " or ".join(repr(str(path / name)) for name in held)
            return f"checkpoint {str(path)!r} is a run folder, not a checkpoint file; give its {choices}"
        return (f"checkpoint {str(path)!r} is a folder, not a checkpoint file; give a .pt file, such as a run "
                f"folder's {LAST} or {BEST}")
    if path.exists():
        return f"checkpoint {str(path)!r} is not a regular file (a device, pipe or socket); give a .pt file"
    return f"checkpoint {str(path)!r} does not exist"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def inconsistency(payload: dict) -> str | None:
    """Return what is wrong with the content of a checkpoint dict (a phrase), or None when it hangs together.

    Checks the types and ranges of the entries every reader uses (config, epoch,
    num_classes, model) and, where present, those that only resuming uses (class counts,
    metric history, optimizer, random states), so a crafted or hand-edited file is named
    here instead of failing somewhere inside torch.
    """
    config, epoch, num_classes, model = (payload[key] for key in REQUIRED_KEYS)
    if not isinstance(config, dict):
        return f"its config is a {type(config).__name__}, not a dict of config fields"
    if not _is_int(epoch) or epoch < 1:
        return f"its epoch is {epoch!r}, and a saved epoch count is an integer >= 1"
    planned = config.get("epochs")
    if _is_int(planned) and epoch > planned:
        return f"its epoch is {epoch} but its config plans only epochs={planned}"
    if not _is_int(num_classes) or num_classes < 1:
        return f"its num_classes is {num_classes!r}, and it must be an integer >= 1"
    if not isinstance(model, dict) or not model or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in model.items()):
        return "its model entry is not a non-empty dict of named tensors"
    counts = payload.get("class_counts")
    if counts is not None and (not isinstance(counts, list) or len(counts) != num_classes
                               or not all(_is_int(c) and c >= 0 for c in counts)):
        return f"its class_counts is not a list of {num_classes} counts >= 0 (one per class)"
    history = payload.get("history")
    if history is not None and (not isinstance(history, list) or not all(isinstance(r, dict) for r in history)
                                or [r.get("epoch") for r in history] != list(range(1, epoch + 1))):
        return f"its metric history does not hold one record for each of epochs 1..{epoch}"
    data = payload.get("data")
    if data is not None and not (isinstance(data, dict) and isinstance(data.get("class_names"), list)
                                 and len(data["class_names"]) == num_classes
                                 and isinstance(data.get("train_class_counts"), list)
                                 and len(data["train_class_counts"]) == num_classes):
        return f"its data identity does not name {num_classes} classes with their training counts"
    if "optimizer" in payload:
        optimizer = payload["optimizer"]
        if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) or not isinstance(
                optimizer.get("param_groups"), list):
            return "its optimizer entry is not an optimizer state (a dict with state and param_groups)"
    if "rng" in payload:
        problem = _rng_inconsistency(payload["rng"])
        if problem is not None:
            return problem
    return None


def _rng_inconsistency(state) -> str | None:
    if not isinstance(state, dict) or not {"python", "numpy", "torch"} <= set(state):
        return "its random states (rng) lack the python, numpy or torch entry"
    if not isinstance(state["torch"], torch.Tensor) or state["torch"].dtype != torch.uint8:
        return "its torch random state is not a uint8 tensor"
    numpy_state = state["numpy"]
    if not isinstance(numpy_state, (list, tuple)) or len(numpy_state) != 5 or not isinstance(
            numpy_state[1], torch.Tensor) or numpy_state[1].numel() != 624:
        return "its numpy random state is not (kind, 624 keys, position, has_gauss, cached)"
    python_state = state["python"]
    if not isinstance(python_state, (list, tuple)) or len(python_state) != 3:
        return "its python random state is not a (version, state, gauss) triple"
    if "cuda" in state and not (isinstance(state["cuda"], list) and all(
            isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in state["cuda"])):
        return "its CUDA random states are not a list of uint8 tensors"
    return None


def check_resumable(payload: dict, path: str | os.PathLike) -> None:
    """Raise CheckpointError when ``payload`` lacks what resuming needs besides the model (optimizer, rng)."""
    missing = [key for key in ("optimizer", "rng") if key not in payload]
    if missing:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is incomplete: it lacks {', '.join(missing)}, which resuming needs"
        )


def saved_identity(payload: dict) -> dict | None:
    """Return the data identity a checkpoint was saved with (``ccmix.data.identity``): its ``data`` entry, or
    for checkpoints written before that entry existed its per-class training counts; None when it has neither."""
    if isinstance(payload.get("data"), dict):
        return payload["data"]
    if payload.get("class_counts") is not None:
        return {"train_class_counts": payload["class_counts"]}
    return None


def load_optimizer_state(optimizer: torch.optim.Optimizer, payload: dict, path: str | os.PathLike) -> None:
    """Load ``payload['optimizer']`` into ``optimizer``; CheckpointError when it does not fit the model's parameters."""
    state = payload.get("optimizer")
    if state is None:
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete: it lacks optimizer, which resuming needs")
    own_groups = optimizer.param_groups
    groups = state["param_groups"]
    if len(groups) != len(own_groups) or any(
            not isinstance(g, dict) or len(g.get("params", ())) != len(o["params"]) for g, o in zip(groups, own_groups)):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is inconsistent: its optimizer state covers other parameters than the model's"
        )
    parameters = [p for group in own_groups for p in group["params"]]
    ids = [i for group in groups for i in group["params"]]
    for index, parameter in zip(ids, parameters):
        entry = state["state"].get(index, {})
        buffer = entry.get("momentum_buffer") if isinstance(entry, dict) else None
        if buffer is not None and (not isinstance(buffer, torch.Tensor) or tuple(buffer.shape) != tuple(parameter.shape)):
            shape = tuple(buffer.shape) if isinstance(buffer, torch.Tensor) else type(buffer).__name__
            raise CheckpointError(
                f"checkpoint {str(path)!r} is inconsistent: the momentum buffer of optimizer parameter {index} has "
                f"shape {shape} and the parameter {tuple(parameter.shape)}"
            )
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} holds an optimizer state that does not load ({error})") from None


def _damaged_sentence(path: Path, size: int, error: Exception) -> str:
    detail = str(error).strip()
    if "Weights only load failed" in detail:  # garbage bytes read as a pickle: say what failed, not torch's advice
        lines = [line.strip() for line in detail.splitlines() if "Unsupported" in line or "error" in line.lower()]
        detail = lines[-1] if lines else ""
    detail = detail.splitlines()[0].split(". ")[0].rstrip(".") if detail else "no detail"
    return (
        f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read "
        f"({size} bytes; {type(error).__name__}: {detail})"
    )


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_device(item, device) for item in value]
    return value


def load_resume_checkpoint(run_dir: str | os.PathLike, map_location="cpu",
                           set_aside_damaged: bool = False) -> tuple[dict, Path] | None:
    """Return (payload, path) of the newest readable checkpoint in ``run_dir`` (last.pt, else previous.pt), or None.

    A damaged or missing last.pt is reported with a CheckpointWarning naming the file and the
    problem; with ``set_aside_damaged`` a damaged last.pt is renamed to last.pt.damaged so the
    next save does not rotate it into previous.pt. CheckpointError when checkpoints exist but
    none is readable.
    """
    run_dir = Path(run_dir)
    problems: list[str] = []
    damaged: list[Path] = []
    for name in (LAST, PREVIOUS):
        candidate = run_dir / name
        if not candidate.exists():
            if name == LAST and (run_dir / PREVIOUS).exists():
                problems.append(f"checkpoint {str(candidate)!r} is missing (a save was interrupted)")
            continue
        try:
            payload = load_checkpoint(candidate, map_location=map_location)
        except CheckpointError as error:
            problems.append(str(error))
            damaged.append(candidate)
            continue
        if problems:
            if set_aside_damaged:
                for path in damaged:
                    os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))
            warnings.warn(
                f"{'; '.join(problems)}; resuming from the previous good checkpoint {str(candidate)!r} "
                f"(epoch {int(payload['epoch'])})", CheckpointWarning, stacklevel=2,
            )
        return payload, candidate
    if problems:
        raise CheckpointError(f"no readable checkpoint in {str(run_dir)!r}: {'; '.join(problems)}; "
                              f"{_start_over_advice(run_dir)}")
    return None


def _start_over_advice(run_dir: Path) -> str:
    """Return how to train from scratch when no checkpoint of ``run_dir`` is readable, deleting nothing.

    Moving only the damaged checkpoints would not do: the folder's results (best.pt,
    summary.json, ...) would then be refused as results without a checkpoint. So the whole
    folder is set aside under a new name, and the same command starts a new one.
    """
    folder = run_dir.resolve() if run_dir.name in ("", ".", "..") else run_dir
    aside, number = folder.with_name(folder.name + DAMAGED_SUFFIX), 1
    while aside.exists():  # a name that is free now, so that following the advice literally works
        number += 1
        aside = folder.with_name(f"{folder.name}{DAMAGED_SUFFIX}-{number}")
    return (f"to train from scratch, move the damaged files away together with the rest of the run: rename the "
            f"folder {str(folder)!r} (e.g. to {str(aside)!r}; every file in it is kept) and run the same command "
            "again, or use another out_dir")


# --------------------------------------------------------------------------- model state


def describe_model(config_dict: dict, num_classes: int) -> str:
    """Return a short description such as ``resnet32 with 10 classes, feat_dim 128, linear classifier``."""
    return (
        f"{config_dict.get('arch')} with {num_classes} classes, feat_dim {config_dict.get('feat_dim')}, "
        f"{config_dict.get('classifier')} classifier"
    )


def load_model_state(model: torch.nn.Module, payload: dict, path: str | os.PathLike, expected: str,
                     num_classes: int | None = None, arch: str | None = None) -> None:
    """Load ``payload['model']`` into ``model``; CheckpointError naming the mismatch when the model differs.

    ``expected`` describes ``model`` (see describe_model); ``num_classes`` and ``arch``, when
    given, let the message say which of the two differs.
    """
    state = payload["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: its model entry is not a dict of tensors")
    own = model.state_dict()
    saved = payload.get("model_description") or describe_model(payload.get("config", {}), payload.get("num_classes"))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or mismatched):
        model.load_state_dict(state)
        return
    reasons = []
    saved_arch = payload.get("config", {}).get("arch")
    if arch is not None and saved_arch is not None and saved_arch != arch:
        reasons.append(f"the architecture differs ({saved_arch} in the checkpoint, {arch} here)")
    saved_classes = payload.get("num_classes")
    if num_classes is not None and saved_classes is not None and int(saved_classes) != int(num_classes):
        reasons.append(f"the number of classes differs ({int(saved_classes)} in the checkpoint, {int(num_classes)} here)")
    if mismatched:  # the first differing shape is the clearest evidence; counts of names would add little
        key = mismatched[0]
        reasons.append(f"parameter {key} has shape {tuple(state[key].shape)} in the checkpoint and "
                       f"{tuple(own[key].shape)} in the model")
    elif missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model parameters are missing from it (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} of its parameters are unknown to the model (first: {unexpected[0]})")
        reasons.append(" and ".join(parts))
    raise CheckpointError(
        f"checkpoint {str(path)!r} holds {saved} and does not fit {expected}: {'; '.join(reasons)}"
    )
