"""Training state and checkpoints that cannot lie: state is tied to its inputs, files carry
checksums that are verified on load, a non-finite loss keeps the last finite state, a full disk
is named, leftovers of killed saves are cleaned up, and written files honour the umask."""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import struct
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

import vqshrink.io as vio
from vqshrink.integrity import FULL_HASH_LIMIT, file_digest, input_digests
from vqshrink.io import CheckpointError, atomic_path, load_torch, save_json, save_npz, save_torch
from vqshrink.training import NonFiniteLossError, ResumableState, check_finite


def flip_bytes_in_member(path, member_suffix: str, count: int = 64, at: int = 100) -> None:
    """Invert ``count`` bytes inside one member of a zip archive (a tensor's storage)."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    blob = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26:
                                                    info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + at
    for k in range(count):
        blob[start + k] ^= 0xFF
    path.write_bytes(bytes(blob))


# ------------------------------------------------------------------ state tied to its inputs
def test_state_made_from_other_inputs_is_set_aside(tmp_path, caplog):
    init = tmp_path / "init.pt"
    save_torch({"w": torch.arange(4.0)}, init)
    state_dir = tmp_path / "state"
    ResumableState(state_dir, {"lr": 1e-3}, inputs={"init": init}).save(lambda: {"epoch": 3})
    # same settings, same input: resumes
    assert ResumableState(state_dir, {"lr": 1e-3}, inputs={"init": init}).restore()["epoch"] == 3
    save_torch({"w": torch.arange(4.0) + 1}, init)  # the upstream stage reran differently
    with caplog.at_level(logging.WARNING, logger="vqshrink.training"):
        assert ResumableState(state_dir, {"lr": 1e-3}, inputs={"init": init}).restore() is None
    assert not (state_dir / "last.pt").exists()
    assert len(list(state_dir.glob("stale-*.pt"))) == 1
    assert "other inputs (init)" in caplog.text


def test_input_digest_follows_contents_not_the_save(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    save_torch({"w": torch.ones(3)}, a)
    save_torch({"w": torch.ones(3)}, b)  # another file name, another serialization id
    assert file_digest(a) == file_digest(b)
    save_torch({"w": torch.tensor([1.0, 1.0, 2.0])}, b)
    assert file_digest(a) != file_digest(b)
    npz = tmp_path / "x.npz"
    save_npz(npz, x=np.arange(5))
    before = file_digest(npz)
    save_npz(npz, x=np.arange(5) * 2)
    assert file_digest(npz) != before
    # a plain file is hashed; a directory by its files
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.npy").write_bytes(b"123")
    d0 = file_digest(tmp_path / "d")
    (tmp_path / "d" / "t.npy").write_bytes(b"124")
    assert file_digest(tmp_path / "d") != d0
    assert input_digests({"a": a, "none": None}).keys() == {"a"}


def test_input_digest_of_a_large_plain_file_reads_only_its_metadata(tmp_path):
    big = tmp_path / "images.npy"
    big.write_bytes(b"\0" * 4096)
    os.utime(big, ns=(1_000_000_000, 1_000_000_000))
    digest = file_digest(big, limit=1024)
    assert digest == "stat:4096:1000000000"
    big.write_bytes(b"\1" * 4096)  # rewritten: a new modification time
    assert file_digest(big, limit=1024) != digest
    assert FULL_HASH_LIMIT >= 200 * 2**20  # paper-scale token maps are hashed in full


# ------------------------------------------------------------------ checksums
def test_damaged_tensor_in_training_state_stops_naming_the_file(tmp_path):
    state = ResumableState(tmp_path, {"lr": 1e-3})
    state.save(lambda: {"epoch": 1, "w": torch.randn(1000)})
    last = tmp_path / "last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    flip_bytes_in_member(last, "data/0", count=64)
    torch.load(last, weights_only=True)  # torch alone does not notice
    with pytest.raises(CheckpointError, match=r"last\.pt.*checksum.*delete it"):
        ResumableState(tmp_path, {"lr": 1e-3}).restore()


def test_damaged_model_file_is_refused_on_load(tmp_path):
    path = tmp_path / "model.pt"
    save_torch({"config": {"a": 1}, "model": {"w": torch.randn(500)}}, path)
    flip_bytes_in_member(path, "data.pkl", count=4, at=20)
    with pytest.raises(CheckpointError, match=r"model\.pt.*data\.pkl"):
        load_torch(path)


def test_garbage_state_message_gives_no_weights_only_advice(tmp_path):
    torch.save({"f": print}, tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02 this is not a checkpoint")
    for name in ("evil.pt", "junk.pt"):
        with pytest.raises(CheckpointError) as err:
            load_torch(tmp_path / name)
        text = str(err.value)
        assert name in text and "delete it" in text
        assert "weights_only" not in text and "will likely succeed" not in text


# ------------------------------------------------------------------ resume log
def test_resume_log_names_the_position_of_step_granular_state(tmp_path, caplog):
    ResumableState(tmp_path, {}).save(lambda: {"pos": {"epoch": 1, "batch": 3, "step": 9}})
    with caplog.at_level(logging.INFO, logger="vqshrink.training"):
        ResumableState(tmp_path, {}).restore()
    assert "None" not in caplog.text
    assert "at step 9, after 1 epochs and 3 batches" in caplog.text


# ------------------------------------------------------------------ non-finite loss
def test_non_finite_loss_keeps_the_finite_state_and_says_where(tmp_path):
    state = ResumableState(tmp_path, {}, interval_s=3600)  # no periodic save happened yet
    w = torch.ones(3)
    with pytest.raises(NonFiniteLossError) as err:
        check_finite(torch.tensor(float("nan")), epoch=0, step=1, state=state,
                     snapshot=lambda: {"pos": {"epoch": 0, "batch": 1, "step": 1}, "w": w})
    assert str(tmp_path / "last.pt") in str(err.value)
    kept = load_torch(tmp_path / "last.pt")
    assert kept["pos"]["step"] == 1 and torch.equal(kept["w"], w)


def test_non_finite_weights_are_not_saved_and_the_message_says_so(tmp_path):
    state = ResumableState(tmp_path, {}, interval_s=0)
    state.save(lambda: {"pos": {"epoch": 0, "batch": 2, "step": 2}, "w": torch.ones(2)})
    bad = {"pos": {"epoch": 0, "batch": 5, "step": 5}, "w": torch.tensor([1.0, float("inf")])}
    with pytest.raises(NonFiniteLossError, match="no longer finite") as err:
        check_finite(torch.tensor(float("inf")), epoch=0, step=5, state=state,
                     snapshot=lambda: bad)
    assert "step 2" in str(err.value) and str(tmp_path / "last.pt") in str(err.value)
    assert load_torch(tmp_path / "last.pt")["pos"]["step"] == 2  # the finite one stays


# ------------------------------------------------------------------ disk full
class _FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes."""

    room = 2000

    def write(self, b):
        if self.tell() + len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def test_disk_full_names_the_file_and_leaves_the_old_state(tmp_path, monkeypatch):
    state = ResumableState(tmp_path, {}, interval_s=0)
    state.save(lambda: {"epoch": 1, "w": torch.zeros(10)})
    monkeypatch.setattr(vio, "open", lambda p, mode="r": _FullDisk(p, mode.replace("b", "")),
                        raising=False)
    with pytest.raises(OSError) as err:
        state.save(lambda: {"epoch": 2, "w": torch.randn(10_000)})
    text = str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert str(tmp_path / "last.pt") in text and "disk is full" in text
    assert "inline_container" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no partial file
    monkeypatch.undo()
    assert load_torch(tmp_path / "last.pt")["epoch"] == 1


def test_disk_full_from_any_writer_names_the_file(tmp_path):
    out = tmp_path / "table.csv"
    with pytest.raises(OSError, match=r"table\.csv.*disk is full"):
        with atomic_path(out) as tmp:
            tmp.write_text("a,b\n")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_killed_saves_are_removed_and_stale_state_listed(tmp_path, caplog):
    ResumableState(tmp_path, {"lr": 1}).save(lambda: {"epoch": 1})
    ResumableState(tmp_path, {"lr": 2}).restore()  # sets the first aside
    leftover = tmp_path / ".last.pt.k3x9_q2a.tmp"  # a save killed halfway
    leftover.write_bytes(b"partial")
    other = tmp_path / ".last.pt.bak.abcdefgh.tmp"  # not a temporary of last.pt
    other.write_bytes(b"keep")
    with caplog.at_level(logging.INFO, logger="vqshrink"):
        assert ResumableState(tmp_path, {"lr": 2}).restore() is None
    assert not leftover.exists() and other.exists()
    assert ".last.pt.k3x9_q2a.tmp" in caplog.text
    stale = next(tmp_path.glob("stale-*.pt"))
    assert stale.name in caplog.text
    killed = tmp_path / ".model.pt.abcd1234.tmp"  # any atomic write cleans up after its kin
    killed.write_bytes(b"partial")
    save_torch({"w": torch.ones(1)}, tmp_path / "model.pt")
    assert not killed.exists()


# ------------------------------------------------------------------ umask
@pytest.fixture()
def umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_honour_the_umask(tmp_path, umask):
    save_torch({"w": torch.ones(2)}, tmp_path / "model.pt")
    save_json({"a": 1}, tmp_path / "run.json")
    save_npz(tmp_path / "x.npz", x=np.ones(2))
    with atomic_path(tmp_path / "table.csv") as tmp:
        pd.DataFrame({"a": [1]}).to_csv(tmp, index=False)
    ResumableState(tmp_path / "state", {}).save(lambda: {"epoch": 1})
    for name in ("model.pt", "run.json", "x.npz", "table.csv", "state/last.pt"):
        assert _mode(tmp_path / name) == 0o644, name
    os.umask(0o077)
    save_json({"a": 1}, tmp_path / "private.json")
    assert _mode(tmp_path / "private.json") == 0o600


def test_prepared_dataset_directory_honours_the_umask(tmp_path, umask):
    from vqshrink.data.prepared import SplitRows, write_prepared

    rows = SplitRows(index=["0", "1"], labels=np.array([0, 1]),
                     images=np.zeros((2, 4, 4, 3), np.uint8))
    out = write_prepared(tmp_path / "ds", {"train": rows},
                         meta={"dataset": "t", "classes": ["a", "b"]}, resolution=4,
                         progress=False)
    assert _mode(out) == 0o755
    assert _mode(out / "meta.json") == 0o644
