"""Resumable training state: atomic, settings-checked, corruption is an error."""

import pytest
import torch

from vqshrink.io import CheckpointError, load_torch, save_torch
from vqshrink.training import NonFiniteLossError, ResumableState, check_finite


def test_save_and_restore_round_trip(tmp_path):
    state = ResumableState(tmp_path, {"lr": 1e-3}, interval_s=0)
    state.save(lambda: {"epoch": 3, "w": torch.ones(2)})
    got = ResumableState(tmp_path, {"lr": 1e-3}).restore()
    assert got["epoch"] == 3 and torch.equal(got["w"], torch.ones(2))


def test_nothing_to_restore_starts_fresh(tmp_path):
    assert ResumableState(tmp_path / "none", {"a": 1}).restore() is None


def test_other_settings_are_set_aside_not_resumed(tmp_path):
    ResumableState(tmp_path, {"lr": 1e-3}).save(lambda: {"epoch": 3})
    assert ResumableState(tmp_path, {"lr": 1e-2}).restore() is None
    assert not (tmp_path / "last.pt").exists()
    assert len(list(tmp_path.glob("stale-*.pt"))) == 1


def test_corrupted_state_is_a_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"\x80\x02 this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"last\.pt.*delete it"):
        ResumableState(tmp_path, {}).restore()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    save_torch({"w": torch.randn(1000)}, tmp_path / "full.pt")
    blob = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_torch(tmp_path / "cut.pt")


def test_checkpoints_refuse_arbitrary_pickles(tmp_path):
    torch.save({"f": print}, tmp_path / "evil.pt")  # weights_only=True refuses callables
    with pytest.raises(CheckpointError):
        load_torch(tmp_path / "evil.pt")


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.pt"
    save_torch({"v": 1}, target)

    def boom(obj, fh):  # save_torch hands torch an open file
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_torch({"v": 2}, target)
    assert load_torch(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_maybe_save_respects_interval(tmp_path):
    state = ResumableState(tmp_path, {}, interval_s=3600)
    assert not state.maybe_save(lambda: {"epoch": 1})
    assert state.maybe_save(lambda: {"epoch": 1}, force=True)
    assert (tmp_path / "last.pt").exists()


def test_non_finite_loss_names_epoch_and_step():
    check_finite(torch.tensor(1.0), epoch=0, step=0)
    with pytest.raises(NonFiniteLossError, match="nan at epoch 4, step 17"):
        check_finite(torch.tensor(float("nan")), epoch=4, step=17)


def test_early_stopping_update_counts_bad_evaluations_and_stops():
    from vqshrink.training import early_stopping_update

    book = {"best_val": float("inf"), "bad_evals": 0, "stopped_early": False, "done": False}
    seen = [early_stopping_update(book, v, patience=2, last_epoch=False)
            for v in (3.0, 2.0, 2.5, 1.0, 1.5)]
    assert seen == [True, True, False, True, False]
    assert book["best_val"] == 1.0 and book["bad_evals"] == 1 and not book["done"]
    early_stopping_update(book, 1.2, patience=2, last_epoch=True)  # last epoch: no early stop
    assert book["bad_evals"] == 2 and not book["stopped_early"]
    early_stopping_update(book, 1.2, patience=2, last_epoch=False)
    assert book["stopped_early"] and book["done"]
    off = {"best_val": 0.0, "bad_evals": 0, "stopped_early": False, "done": False}
    for _ in range(5):
        early_stopping_update(off, 1.0, patience=0, last_epoch=False)
    assert off["bad_evals"] == 5 and not off["done"]  # patience 0: never stops
