"""The identity of a run's data: class names, per-class training counts and fingerprints of what was read.

A run of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024) learns one output per class, in the
order of the class names. If the data changes between two sessions of the same run
(a class folder renamed or removed, images deleted, another long-tailed subset), the
same class index means another class and the labels are silently permuted. The run
folder's config.json and every checkpoint therefore keep this identity, and resuming
or evaluating compares it with the data found now.

The fingerprints are SHA-256 digests of one line per image, in dataset order: the
image's path relative to the data root and its label for folder and list datasets,
its index in the full source split and its label for CIFAR and synthetic data (where
the long-tailed subset is the identity). Moving the data root does not change them;
adding, removing, renaming or relabelling an image does. Pixel contents are not read.
"""

from __future__ import annotations

import hashlib


def fingerprint(dataset) -> str:
    """Return the SHA-256 hex digest of ``dataset``'s identity records (see the module docstring)."""
    hasher = hashlib.sha256()
    records = dataset.identity_records()
    hasher.update(f"{type(dataset).__name__}:{len(records)}\n".encode())
    for record in records:
        hasher.update(record.encode("utf-8", "surrogateescape") + b"\n")
    return hasher.hexdigest()


def data_identity(train, test) -> dict:
    """Return the JSON-ready identity of a (train, test) pair: class_names, train_class_counts, two fingerprints."""
    return {
        "class_names": [str(name) for name in train.classes],
        "train_class_counts": [int(count) for count in train.class_counts],
        "train_fingerprint": fingerprint(train),
        "test_fingerprint": fingerprint(test),
    }


def identity_differences(saved: dict, current: dict, compare_test: bool = True) -> list[str]:
    """Return phrases naming how the data ``current`` differs from the ``saved`` identity ([] when it does not).

    Entries missing from ``saved`` (runs written before they were kept) are not compared.
    """
    phrases = []
    names, now_names = saved.get("class_names"), current["class_names"]
    if names is not None and list(names) != list(now_names):
        if len(names) != len(now_names):
            phrases.append(f"the data now has {len(now_names)} classes and the run was trained on {len(names)}")
        else:
            changed = [i for i, (a, b) in enumerate(zip(names, now_names)) if a != b]
            more = f" (and {len(changed) - 1} other classes)" if len(changed) > 1 else ""
            phrases.append(f"class {changed[0]} is now named {now_names[changed[0]]!r} and was {names[changed[0]]!r}"
                           f"{more}")
    counts, now_counts = saved.get("train_class_counts"), current["train_class_counts"]
    if not phrases and counts is not None and list(counts) != list(now_counts):
        changed = [i for i, (a, b) in enumerate(zip(counts, now_counts)) if a != b]
        if changed:
            index = changed[0]
            more = f" (and {len(changed) - 1} other classes)" if len(changed) > 1 else ""
            phrases.append(f"class {now_names[index]!r} now has {now_counts[index]} training images and had "
                           f"{counts[index]}{more}")
        else:
            phrases.append(f"the data now has {len(now_counts)} classes and the run was trained on {len(counts)}")
    if not phrases and saved.get("train_fingerprint") not in (None, current["train_fingerprint"]):
        phrases.append("the training images differ (other files or another subset) though every class keeps its "
                       "name and count")
    if compare_test and saved.get("test_fingerprint") not in (None, current["test_fingerprint"]):
        phrases.append("the test images differ (files added, removed or renamed)")
    return phrases


__all__ = ["fingerprint", "data_identity", "identity_differences"]
