"""Checksums of the files stages write and read.

Every checkpoint this package writes (training state, models, initialised codebooks) is a
torch zip archive, and every ``.npz`` is a zip archive too: their writers store a CRC-32 of
each member in the archive's directory (``save_torch`` makes sure torch computes them).
:func:`verify_archive` reads every member back and compares, so a damaged byte inside a tensor
is found before the file is used (``torch.load`` itself does not look; ``np.load`` does).

:func:`input_digests` names the contents of a stage's input files, cheaply, so that training
state can be tied to the inputs it was made from:

- a zip archive (every ``.pt`` / ``.npz`` written here): a hash of the member names, sizes and
  the CRC-32s its writer stored, read from the directory at the end of the file (kilobytes,
  whatever the file's size); the member names' leading folder (torch names it after the file
  it wrote) and torch's per-save ``serialization_id`` are left out, so the same tensors saved
  twice give the same digest;
- any other file up to :data:`FULL_HASH_LIMIT` bytes (records, token maps: at most ~200 MB at
  paper scale): the SHA-256 of its bytes (~1 s per GB here);
- a larger file (the image arrays of a prepared dataset, 25 GB for ImageNet-100): its size and
  modification time, the test Snakemake itself applies; such a file is rewritten only together
  with the record beside it (``meta.json``, which holds its creation time), and that record is
  hashed in full;
- a directory: the digests of the files in it (hidden temporaries left out).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"
FULL_HASH_LIMIT = 256 * 2**20  # bytes; larger plain files are identified by size and mtime
_CHUNK = 2**20


class ChecksumError(ValueError):
    """A file's contents do not match the checksums stored in it; the message names both."""


def is_archive(path: str | Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == ZIP_MAGIC


def verify_archive(path: str | Path) -> None:
    """Read every member of the zip archive ``path`` and compare it with its stored CRC-32.

    Raises :class:`ChecksumError` naming the file and the damaged member (or the archive's
    directory, when ``path`` is not a readable zip archive at all); an error reading the
    disk propagates as itself.
    """
    path = Path(path)
    member = None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                member = info.filename
                with zf.open(info) as fh:
                    while fh.read(_CHUNK):
                        pass
    except OSError:
        raise
    except Exception as err:  # BadZipFile (bad CRC, broken headers), EOFError, ValueError, ...
        why = f"{type(err).__name__}: {err}"
        if member is None:
            raise ChecksumError(f"{path}: not a readable zip archive ({why})") from err
        raise ChecksumError(f"{path}: member {member} does not match the checksum stored when "
                            f"it was written ({why})") from err


def archive_digest(path: str | Path) -> str:
    """Content digest of a zip archive from the CRC-32s in its directory (module docstring)."""
    with zipfile.ZipFile(path) as zf:
        rows = sorted(
            f"{info.filename.partition('/')[2] or info.filename}\t{info.CRC:08x}\t{info.file_size}"
            for info in zf.infolist()
            if not info.filename.endswith("serialization_id")
        )
    return "zip:" + hashlib.sha256("\n".join(rows).encode()).hexdigest()[:32]


def file_digest(path: str | Path, *, limit: int = FULL_HASH_LIMIT) -> str:
    """Cheap content digest of a file or directory (module docstring)."""
    path = Path(path)
    if path.is_dir():
        rows = [f"{p.relative_to(path)}\t{file_digest(p, limit=limit)}"
                for p in sorted(path.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in
                                            p.relative_to(path).parts)]
        return "dir:" + hashlib.sha256("\n".join(rows).encode()).hexdigest()[:32]
    st = path.stat()
    if is_archive(path):
        try:
            return archive_digest(path)
        except zipfile.BadZipFile:
            pass  # damaged: identified by its bytes below; loading it will say what is wrong
    if st.st_size > limit:
        return f"stat:{st.st_size}:{st.st_mtime_ns}"
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()[:32]


def input_digests(inputs: Mapping[str, str | Path | None]) -> dict[str, str]:
    """``{name: digest}`` of a stage's input files (``None`` entries are skipped)."""
    return {name: file_digest(p) for name, p in sorted(inputs.items()) if p is not None}
