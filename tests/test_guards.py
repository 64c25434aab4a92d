"""Behaviours that a plausible wrong change would break silently: each test here fails on such a
change (a mutant made by hand, the test seen failing, the change reverted)."""

import os

from aelight import safe_files
from aelight.checkpoints import trust
from aelight.run.run_data import mnist_data


def test_a_trusted_module_admits_itself_and_its_submodules_never_a_longer_name(monkeypatch):
    monkeypatch.setenv(trust.TRUSTED_MODULES_ENV, "evilmark, mylab.variants")
    assert trust.is_allowed("evilmark.Enc") and trust.is_allowed("evilmark.nets.Enc")
    assert trust.is_allowed("mylab.variants.L1AE")
    assert not trust.is_allowed("evilmarkx.Enc")  # a bare prefix match would admit it
    assert not trust.is_allowed("mylab.variantsx.L1AE") and not trust.is_allowed("mylab.Other")


def test_an_atomic_write_syncs_the_file_then_renames_it_then_syncs_the_folder(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", "folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("rename", os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(safe_files.os, "fsync", fsync)
    monkeypatch.setattr(safe_files.os, "replace", replace)
    safe_files.write_text(tmp_path / "result.json", "{}\n")
    assert calls == [("fsync", "file"), ("rename", "result.json"), ("fsync", "folder")]
    assert (tmp_path / "result.json").read_text() == "{}\n"


def test_data_classes_keeps_only_those_digits_in_training_and_validation_and_every_digit_in_test(tiny_data):
    dm = mnist_data(str(tiny_data), classes=[3], val_size=100)
    for split in ("train", "val"):
        labels = dm.split_tensors(split)[1]
        assert len(labels) > 0 and set(labels.tolist()) == {3}, split
    assert len(set(dm.split_tensors("test")[1].tolist())) == 10
    every = mnist_data(str(tiny_data), val_size=100)
    threes = (every.split_tensors("val")[1] == 3).sum().item()
    assert len(dm.split_tensors("val")[1]) == threes  # the same held-out images, filtered


def test_ctrl_c_inside_a_checkpoint_write_lands_after_it_with_the_file_whole(tmp_path, monkeypatch):
    import signal

    import torch

    from aelight.checkpoints.io import SafeCheckpointIO

    real_save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the bytes are being written
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted_save)
    # Python's Ctrl-C handler, also where the tests were started with SIGINT ignored (a shell's background)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    path = tmp_path / "last.ckpt"
    try:
        SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the Ctrl-C was lost")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert torch.load(path, weights_only=True)["state_dict"]["w"].sum().item() == 3
