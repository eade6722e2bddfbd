"""A run folder or checkpoint whose recorded data or recipe does not match the requested run.
"""

from __future__ import annotations

from ccmix.config.rules import ConfigError
from ccmix.errors import ShownAsSentence


class RunFolderConflict(ShownAsSentence, ConfigError):
    """The run folder holds another run, or results that this training would overwrite."""


def check_data_identity(saved: dict | None, current: dict, where: str, compare_test: bool = True) -> None:
    """Raise RunFolderConflict naming what changed when the data ``current`` is not the data of ``saved``.

    ``saved`` is config.json's or a checkpoint's identity (None: an old run without one);
    ``where`` names the run folder or checkpoint in the sentence.
    """
    from ccmix.data.identity import identity_differences

    if not saved:
        return
    phrases = identity_differences(saved, current, compare_test=compare_test)
    if phrases:
        raise RunFolderConflict(
            f"{where} was trained on other data than found now: {'; '.join(phrases)}; going on would mix two data "
            "sets (and a class index may now mean another class), so nothing was changed: restore the data it was "
            "trained on, or train a new run into a new out_dir"
        )
