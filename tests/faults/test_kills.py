"""SIGKILL (and Ctrl-C) at chosen points of real training processes: resume=auto always finishes
the run as if it had never stopped (torch.equal weights, the same metrics.csv byte for byte),
and no truncated checkpoint, CSV or temporary file is ever left for it to pick up."""

import zipfile

import pytest
import torch

from faultlib import assert_loadable_run, assert_same_weights, explain, killed, temp_files, val_epochs

pytestmark = pytest.mark.slow


def checkpoint_step(run_dir, name="last.ckpt"):
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)["global_step"]


def assert_finished_like(run_dir, reference):
    assert_same_weights(reference / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt")
    assert_same_weights(reference / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "best.ckpt")
    assert (run_dir / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    assert temp_files(run_dir) == []


def test_five_faults_in_a_row_end_as_one_uninterrupted_run(runs):
    ref = runs("ref", "trainer.max_epochs=3")
    straight = ref.train("straight")
    assert straight.returncode == 0, explain(straight)
    assert (straight.stdout + straight.stderr).count("`Trainer.fit` stopped") == 1  # Lightning's INFO lines once
    reference = ref.root / "runs" / "quickstart" / "straight"
    assert val_epochs(reference) == [[0, 5], [1, 11], [2, 17]]

    chain = runs("chain", "trainer.max_epochs=3")
    run = chain.root / "runs" / "quickstart" / "chain"

    result = chain.train("chain", fault="step:9")  # mid-epoch 1
    assert killed(result), explain(result)
    assert_loadable_run(run)
    assert checkpoint_step(run) == 6 and val_epochs(run) == [[0, 5]]

    result = chain.resume(fault="fsync:1:.last.ckpt.tmp")  # half-written last.ckpt of epoch 1
    assert killed(result), explain(result)
    [partial] = temp_files(run / "checkpoints")
    assert not zipfile.is_zipfile(partial)  # the kill did hit the write...
    assert_loadable_run(run)  # ...and last.ckpt is still the whole one of epoch 0
    assert checkpoint_step(run) == 6

    result = chain.resume(fault="replaced:1:last.ckpt")  # epoch 1's checkpoint in place, nothing after it done
    assert killed(result), explain(result)
    assert_loadable_run(run)
    assert checkpoint_step(run) == 12 and val_epochs(run) == [[0, 5], [1, 11]]

    result = chain.resume(fault="fsync:1:.metrics.csv.tmp")  # half-written metrics.csv at the end of epoch 2
    assert killed(result), explain(result)
    assert [p.name.split(".tmp-")[0] for p in temp_files(run)] == [".metrics.csv"]
    assert_loadable_run(run)
    assert checkpoint_step(run) == 12 and val_epochs(run) == [[0, 5], [1, 11]]

    result = chain.resume(fault="step:3:INT")  # Ctrl-C in epoch 2
    assert result.returncode == 1, explain(result)
    assert "resume=auto" in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert_loadable_run(run)
    assert checkpoint_step(run) == 12

    result = chain.resume()
    assert result.returncode == 0, explain(result)
    assert val_epochs(run) == [[0, 5], [1, 11], [2, 17]]
    assert_finished_like(run, reference)


def test_mid_epoch_checkpoints_killed_twice_resume_exactly(runs):
    """val_check_interval=0.5 saves last.ckpt mid-epoch; resuming from one continues with the
    batches that were not trained on yet, and the history keeps that epoch's first validation."""
    half = "+trainer.val_check_interval=0.5"
    ref = runs("ref", half)
    straight = ref.train("straight")
    assert straight.returncode == 0, explain(straight)
    reference = ref.root / "runs" / "quickstart" / "straight"
    assert val_epochs(reference) == [[0, 2], [0, 5], [1, 8], [1, 11]]

    chain = runs("chain", half)
    run = chain.root / "runs" / "quickstart" / "chain"
    result = chain.train("chain", fault="step:5")  # after the checkpoint at batch 3 of epoch 0
    assert killed(result), explain(result)
    assert checkpoint_step(run) == 3 and val_epochs(run) == [[0, 2]]

    result = chain.resume(fault="step:7")  # batches 3-5, epoch 1 batches 0-2 (checkpoint), then killed
    assert killed(result), explain(result)
    assert checkpoint_step(run) == 9 and val_epochs(run) == [[0, 2], [0, 5], [1, 8]]

    result = chain.resume()
    assert result.returncode == 0, explain(result)
    assert_finished_like(run, reference)
