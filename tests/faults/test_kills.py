"""SIGKILL (and Ctrl-C) at chosen points of real training processes: resume=auto always finishes
the run as if it had never stopped (torch.equal weights, the same metrics.csv byte for byte),
and no truncated checkpoint, CSV or temporary file is ever left for it to pick up."""

import zipfile

import pytest
import torch

from faultlib import assert_loadable_run, assert_same_weights, explain, killed, temp_files, val_epochs

# 3 epochs of 6 steps, validated (and checkpointed) every 3 steps: mid-epoch checkpoints at steps
# 3, 9, 15 and epoch-end ones at 6, 12, 18; metrics rows are stamped with the step before.
SETUP = ("trainer.max_epochs=3", "trainer.val_check_interval=0.5")
VALIDATIONS = [[0, 2], [0, 5], [1, 8], [1, 11], [2, 14], [2, 17]]


def checkpoint_step(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
def test_six_faults_in_a_row_end_as_one_uninterrupted_run(runs):
    ref = runs("ref", *SETUP)
    straight = ref.train("straight")
    assert straight.returncode == 0, explain(straight)
    assert (straight.stdout + straight.stderr).count("`Trainer.fit` stopped") == 1  # Lightning's INFO lines once
    reference = ref.root / "runs" / "quickstart" / "straight"
    assert val_epochs(reference) == VALIDATIONS

    chain = runs("chain", *SETUP)
    run = chain.root / "runs" / "quickstart" / "chain"

    result = chain.train("chain", fault="step:5")  # mid-epoch 0, after the checkpoint at step 3
    assert killed(result), explain(result)
    assert_loadable_run(run)
    assert checkpoint_step(run) == 3 and val_epochs(run) == VALIDATIONS[:1]

    # Resumed from that mid-epoch checkpoint; killed just after epoch 0's last.ckpt is renamed into place,
    # before anything else ran: the history written before it agrees with it.
    result = chain.resume(fault="replaced:1:last.ckpt")
    assert killed(result), explain(result)
    assert_loadable_run(run)
    assert checkpoint_step(run) == 6 and val_epochs(run) == VALIDATIONS[:2]

    # Resumed at an epoch boundary; killed halfway through writing the second last.ckpt (step 12).
    result = chain.resume(fault="fsync:2:.last.ckpt.tmp")
    assert killed(result), explain(result)
    [partial] = temp_files(run / "checkpoints")
    assert not zipfile.is_zipfile(partial)  # the kill did hit the write...
    assert_loadable_run(run)  # ...and last.ckpt is still the whole one of step 9
    # metrics.csv was flushed for step 12 before its checkpoint; resuming from step 9 drops those rows
    assert checkpoint_step(run) == 9 and val_epochs(run) == VALIDATIONS[:4]

    # Killed halfway through writing metrics.csv, just before the checkpoint of step 12.
    result = chain.resume(fault="fsync:1:.metrics.csv.tmp")
    assert killed(result), explain(result)
    assert [p.name.split(".tmp-")[0] for p in temp_files(run)] == [".metrics.csv"]
    assert_loadable_run(run)  # the previous metrics.csv, whole
    assert checkpoint_step(run) == 9 and val_epochs(run) == VALIDATIONS[:4]

    # Ctrl-C at the 7th step of the next resume: epoch 2, after the mid-epoch checkpoint of step 15.
    result = chain.resume(fault="step:7:INT")
    assert result.returncode == 1, explain(result)
    assert "resume=auto" in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert_loadable_run(run)
    assert checkpoint_step(run) == 15

    result = chain.resume()
    assert result.returncode == 0, explain(result)
    assert val_epochs(run) == VALIDATIONS
    assert_same_weights(reference / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    assert_same_weights(reference / "checkpoints" / "best.ckpt", run / "checkpoints" / "best.ckpt")
    assert (run / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    assert temp_files(run) == []
