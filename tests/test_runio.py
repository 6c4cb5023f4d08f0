"""The one atomic writer (runio.write_atomic_with): a write either lands whole or not at all."""

from __future__ import annotations

import pickle

import pytest
import torch

from projected_grpo import runio


def test_write_atomic_replaces_bytes_and_text(tmp_path):
    path = tmp_path / "f.txt"
    runio.write_atomic(path, b"old\n")
    runio.write_atomic(path, "new ü\n")
    assert path.read_bytes() == "new ü\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_failing_writer_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old content")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        runio.write_atomic_with(path, half_then_fail)
    assert path.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_failing_writer_creates_nothing_when_absent(tmp_path):
    def fail(tmp):
        tmp.write_bytes(b"x")
        raise KeyboardInterrupt  # a kill-like exception is cleaned up too

    with pytest.raises(KeyboardInterrupt):
        runio.write_atomic_with(tmp_path / "new.bin", fail)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_that_fails_to_pickle_keeps_the_previous_one(tmp_path):
    """torch.save opens the temp file and writes part of it before pickling fails."""
    runio.save_checkpoint(tmp_path, {"step": 3, "w": torch.ones(2)})
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        runio.save_checkpoint(tmp_path, {"step": 4, "w": torch.zeros(2), "bad": lambda: 0})
    state = runio.load_checkpoint(tmp_path)
    assert state["step"] == 3 and torch.equal(state["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [runio.CHECKPOINT]
