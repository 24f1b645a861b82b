"""Output folders: the one rule every command that writes a folder follows.

A command never deletes or overwrites what it did not itself create:

* A new folder is written as a temporary sibling (`.NAME.XXXXXXXX`) and renamed into place
  at the end, so a failure or an interrupt (SIGINT/SIGTERM; see cli/signals.py) never
  leaves a half-written folder, and the temporary folder is removed.
* An existing folder is replaced only when it is recognisably an earlier output of the
  same kind (its marker, e.g. the artifact manifest, is present) and holds nothing but
  files that kind writes. Anything else (another model, a folder with a notes.txt) is
  refused with one line that names the path and the fix.
* `--force` (where a command offers it) lifts only that recognition: it replaces an existing
  folder whatever it holds. Even with --force, the output is never a file, never one of the
  command's inputs, a folder inside an input or one that holds an input, and never the current
  directory, the home directory or a folder that holds either.
* What an earlier output built for re-use (`carried`: the benchmark's exported models) moves
  into the new temporary folder at the start and back when the command fails, so re-using it
  never copies it, and a failed or interrupted run leaves the earlier output as it was.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import UniAttnError

# Copied from the source checkpoint beside the weights (tokenizer, generation defaults).
SIDE_FILES = (
    "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
    "added_tokens.json", "chat_template.jinja",
)  # fmt: skip


def json_field(path: Path, key: str):
    """`key` of the JSON object in `path`; None when the file is missing, not JSON or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


@dataclass(frozen=True)
class OutputKind:
    """A kind of folder a command writes: how to recognise one and which paths it owns."""

    what: str  # "an artifact folder"
    is_ours: Callable[[Path], bool]  # the marker check on an existing folder
    owned: tuple[str, ...]  # glob patterns of the relative paths (posix) this kind writes
    forcible: bool = True  # the command offers --force (the fixes name it only then)

    def foreign_entries(self, folder: Path) -> list[str]:
        """Relative paths in `folder` that this kind never writes."""
        foreign = []
        for entry in sorted(folder.rglob("*")):
            rel = entry.relative_to(folder).as_posix()
            parent_foreign = any(rel.startswith(f + "/") for f in foreign)
            if not parent_foreign and not any(fnmatch.fnmatchcase(rel, p) for p in self.owned):
                foreign.append(rel)
        return foreign


ARTIFACT = OutputKind(
    "an artifact folder",
    lambda folder: json_field(folder / "uniattn_manifest.json", "format") == "uniattn-export/artifact",
    (
        "model.onnx", "model.onnx_data", "config.json", "uniattn_layer_map.json",
        "uniattn_manifest.json", *SIDE_FILES, "genai_config.json", "libuniattn_ort.so",
        "reports", "reports/export.json", "reports/validation.json", "trt", "trt/*",
    ),
)  # fmt: skip
CHECKPOINT = OutputKind(
    "a UniAttn checkpoint folder",
    lambda folder: json_field(folder / "config.json", "uniattn") is not None
    and any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")),
    (
        "config.json", "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
        "conversion_report.json", "heal_report.json", "heal_curve.png", *SIDE_FILES,
    ),
)  # fmt: skip
GOLDEN = OutputKind(
    "a golden folder",
    lambda folder: json_field(folder / "golden.json", "format") == "uniattn-export/golden",
    ("golden.json", "logits.npz"),
)


def _holds(folder: Path, path: Path) -> bool:
    """`path` is `folder` or inside it (both resolved)."""
    return path == folder or folder in path.parents


def check_destination(
    out_dir: str | os.PathLike, kind: OutputKind, *, inputs: Iterable[str | os.PathLike | None] = (), force: bool = False
) -> Path:
    """Raise unless writing `kind` to `out_dir` replaces only an earlier output of ours."""
    out_dir = Path(out_dir)
    target = out_dir.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if _holds(target, source) or _holds(source, target):
            relation = "is" if source == target else ("holds" if _holds(target, source) else "is inside")
            raise UniAttnError(
                f"the output {out_dir} {relation} the input {given}; writing there would destroy the input",
                "pass an output folder outside the input" + (" (even --force never replaces an input)" if kind.forcible else ""),
            )
    for protected, name in ((Path.cwd().resolve(), "the current directory"), (Path.home().resolve(), "the home directory")):
        if _holds(target, protected):
            raise UniAttnError(
                f"the output {out_dir} is {name} or holds it; it is never replaced",
                "pass a new folder name, e.g. -o out" + (" (even --force never replaces it)" if kind.forcible else ""),
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise UniAttnError(f"the output {out_dir} is a file, not a folder", "pass a new folder name")
    _check_writable(out_dir)
    if force or not out_dir.is_dir() or not any(out_dir.iterdir()):
        return out_dir
    or_force = ", or --force to replace it" if kind.forcible else ""
    if not kind.is_ours(out_dir):
        raise UniAttnError(f"{out_dir} exists and is not {kind.what}", f"pass a new folder name{or_force}")
    foreign = kind.foreign_entries(out_dir)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise UniAttnError(
            f"{out_dir} is {kind.what} but also holds {foreign[0]}{more}, which replacing it would delete",
            "move those files out, pass a new folder name, or --force to replace it" if kind.forcible
            else "move those files out, or pass a new folder name",
        )
    return out_dir


def _check_writable(path: Path, fix: str = "pick a writable location") -> None:
    """Fail now, not after the slow part, when `path` cannot be created: try a temporary
    folder in its nearest existing ancestor (os.access would be wrong for root)."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UniAttnError(f"cannot create {path}: {ancestor} is a file", "pass a path whose folders are folders")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".uniattn-export-probe.", dir=ancestor))
    except OSError as exc:
        raise UniAttnError(f"cannot write to {ancestor} ({exc.strerror})", fix) from None


def check_file_destination(
    path: str | os.PathLike, what: str, is_ours: Callable[[Path], bool], *, force: bool = False,
    unwritable_fix: str = "pick a writable location", foreign_fix: str = "pass a new file name, or --force to replace it",
) -> Path:  # fmt: skip
    """The same rule for a single file (a report): writable, not a folder, and an existing
    file is replaced only when it is an earlier `what` (or with --force)."""
    path = Path(path)
    if path.is_dir():
        raise UniAttnError(f"{path} is a folder, not a file ({what})", f"pass a file path, e.g. {path / 'report'}")
    _check_writable(path, unwritable_fix)
    if path.exists() and not force and not is_ours(path):
        raise UniAttnError(f"{path} exists and is not {what}", foreign_fix)
    return path


@contextmanager
def atomic_folder(
    out_dir: str | os.PathLike, kind: OutputKind | None = None, *,
    inputs: Iterable[str | os.PathLike | None] = (), force: bool = False, carried: tuple[str, ...] = (),
) -> Iterator[Path]:  # fmt: skip
    """Yield a temporary sibling of `out_dir` to fill; it replaces `out_dir` only when the
    block succeeds (checked again then: the folder may have changed meanwhile).

    kind: None only for folders no user names (caches), which are never checked.
    carried: glob patterns of top-level entries of an earlier output of `kind` in `out_dir`
    that the new output re-uses: they start in the temporary folder, and go back when the block
    fails (whatever the block added inside them stays: it is of the same kind)."""
    out_dir = Path(out_dir)
    inputs = tuple(inputs)
    if kind is not None:
        check_destination(out_dir, kind, inputs=inputs, force=force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp, moved = None, []
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's private 0700 would otherwise become the folder's mode
        if carried and kind is not None and out_dir.is_dir() and kind.is_ours(out_dir):
            for entry in sorted(out_dir.iterdir()):
                if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in carried):
                    moved.append(entry.name)  # first: an interrupt between the two lines still moves it back
                    os.replace(entry, tmp / entry.name)
        yield tmp
        if kind is not None:
            check_destination(out_dir, kind, inputs=inputs, force=force)
        if out_dir.exists():
            # Move the old folder aside first: the destination always holds one whole output.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        if tmp is not None:
            for name in moved:
                if (tmp / name).exists() and out_dir.is_dir() and not (out_dir / name).exists():
                    os.replace(tmp / name, out_dir / name)
            shutil.rmtree(tmp, ignore_errors=True)
        raise
