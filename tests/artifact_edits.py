"""Edits of an artifact folder, for the tests of what catches them: a JSON file edited in place,
and the manifest's records of edited files redone as a careful forger would (so that the hash
check is not what catches the edit)."""

from __future__ import annotations

import json
from pathlib import Path

from uniattn_export.export.artifact import MANIFEST_FILE, file_record


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def setting(key: str, value):
    """An edit (for edit_json) that sets `key` to `value`."""
    return lambda data: data.__setitem__(key, value)


def manifest_edit(edit):
    """A damage of an artifact folder: `edit` applied to its manifest (hashes left as they were)."""
    return lambda artifact: edit_json(artifact / MANIFEST_FILE, edit)


def rehash(artifact: Path, *names: str) -> None:
    """Record the new hash and size of each of `names` (of every file the manifest lists when
    none is named) in the manifest."""

    def update(manifest):
        for name in names or list(manifest["files"]):
            manifest["files"][name] = file_record(artifact / name)

    edit_json(artifact / MANIFEST_FILE, update)
