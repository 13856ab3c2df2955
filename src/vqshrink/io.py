"""Atomic file writes, checkpoints and the small JSON records kept beside outputs.

Every file a stage writes goes to a temporary name in the same directory first and is
moved into place with ``os.replace``: a killed job leaves either the old file or the new
one, never half of one (a temporary left by a killed save is removed by the next write of
the same file). Files are created with the process's umask applied, as ``open`` would. A
full disk is reported as :class:`DiskFullError` naming the file. Checkpoints carry a CRC-32
per member, verified on every load (:mod:`vqshrink.integrity`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vqshrink.integrity import ChecksumError, verify_archive

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

log = logging.getLogger(__name__)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read; the message names the file."""


class DiskFullError(OSError):
    """A file could not be written because its disk (or quota) is full; names the file."""


def _no_space(err: BaseException | None) -> OSError | None:
    """The out-of-space ``OSError`` behind ``err`` (torch wraps it in a RuntimeError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def disk_full_error(path: Path, err: OSError) -> DiskFullError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there now"
    except OSError:
        free = "free space unknown"
    return DiskFullError(err.errno, f"cannot write {path}: the disk is full "
                         f"({err.strerror}; {free}). Nothing was written and the previous "
                         f"{path.name}, if any, is intact; free space and rerun.")


def _temporary_name(path: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")


def leftover_temporaries(path: str | Path) -> list[Path]:
    """Temporaries of ``path`` that a killed write left behind (``.<name>.<8 chars>.tmp``)."""
    path = Path(path)
    pattern = _temporary_name(path)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


def remove_leftovers(path: str | Path) -> list[Path]:
    """Delete (and log) the temporaries a killed write of ``path`` left behind."""
    gone = []
    for tmp in leftover_temporaries(path):
        size = tmp.stat().st_size
        tmp.unlink(missing_ok=True)
        log.info("removed %s (%.1f MiB), left by a killed write of %s", tmp, size / 2**20,
                 Path(path).name)
        gone.append(tmp)
    return gone


def _create_temporary(path: Path) -> Path:
    """A new empty file ``.<name>.<8 hex>.tmp`` beside ``path``, mode 0666 less the umask."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def make_temporary_dir(parent: Path, name: str) -> Path:
    """A new directory ``.<name>.<8 hex>.tmp`` in ``parent``, mode 0777 less the umask."""
    for _ in range(100):
        tmp = parent / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            tmp.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name in {parent}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On any failure the temporary is removed; a full disk raises :class:`DiskFullError`
    naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path)
        tmp = _create_temporary(path)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if (full := _no_space(err)) is not None:
            raise disk_full_error(path, full) from err
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically, with a CRC-32 stored for every member of the archive.

    Written through a Python file object, so that an out-of-space error reaches
    :func:`atomic_path` as itself (a path makes torch report it as "unexpected pos")."""
    import torch  # torch is loaded where checkpoints are, never by the workflow's planning

    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(obj, fh)
    finally:
        torch.serialization.set_crc32_options(crc)


def _reason(err: BaseException) -> str:
    """What a loading error says is wrong, without torch's advice to load with
    ``weights_only=False`` (never right for these files)."""
    text = " ".join(str(err).split())
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
        return f"it holds something other than tensors and plain data ({detail})"
    first = text.split(". ")[0] or type(err).__name__
    return "it is not a plain tensor checkpoint" if "weights_only" in first else first


def load_torch(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` after verifying its stored checksums; a
    damaged or foreign file raises :class:`CheckpointError` naming it."""
    path = Path(path)
    advice = ("It is damaged or not a vqshrink checkpoint; delete it (a deleted training "
              "state restarts its stage, a deleted output is rebuilt by the next run).")
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such checkpoint", str(path))
    try:
        verify_archive(path)
    except ChecksumError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: checksum verification failed, "
                              f"{str(err).removeprefix(f'{path}: ')}. {advice}") from err
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {_reason(err)}. {advice}"
        ) from err


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # no tensor exists before torch is loaded
    return torch is not None and isinstance(value, torch.Tensor)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if _is_tensor(value):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def save_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_npz(path: str | Path, **arrays: Any) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(_to_numpy(v)) for k, v in arrays.items()})


def _to_numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if _is_tensor(value) else value


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_record(preset: str, settings: Mapping, **extra: Any) -> dict:
    """What a stage records beside its outputs: the preset and the settings it ran with."""
    import torch

    return {
        "preset": preset,
        "settings": dict(settings),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "torch": torch.__version__,
        "git": git_revision(),
        **extra,
    }
