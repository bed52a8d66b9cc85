"""File modes of the data dir: private to the server's user, model files optionally shared
with its group (``AIMARKET_GROUP_READABLE_MODELS``, e.g. for serving workers running as
another user of that group)."""

from __future__ import annotations

import os
from pathlib import Path

from .config import Settings

PRIVATE_UMASK = 0o077  # files 0600, folders 0700
_shared_models: Path | None = None  # the models folder whose files the group may read


def secure(settings: Settings) -> None:
    """Make the files this process creates from now on private (umask), and close the data
    dir to others: data files 0600 in 0700 folders. With ``group_readable_models`` the group
    may pass through the data dir (0710, not list it) and read what ``share_model`` opens."""
    global _shared_models
    os.umask(PRIVATE_UMASK)
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    if settings.group_readable_models:
        data.chmod(0o710)
        models = data / "models"
        models.mkdir(exist_ok=True)
        models.chmod(0o750)
        _shared_models = models.resolve()
    else:
        data.chmod(0o700)
        _shared_models = None


def share_model(path: Path) -> None:
    """With group-readable models: the model file 0640 and its folders up to ``models`` 0750
    (the content-addressed store writes them private). Otherwise nothing."""
    if _shared_models is None:
        return
    path = path.resolve()
    if _shared_models not in path.parents or not path.exists():
        return
    if path.stat().st_mode & 0o777 != 0o640:
        path.chmod(0o640)
    for folder in path.parents:
        if folder == _shared_models:
            break
        if folder.stat().st_mode & 0o777 != 0o750:
            folder.chmod(0o750)
