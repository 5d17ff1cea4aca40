"""Which run a command continues, by one rule (issue 32, item 5), and a job its scheduler restarts
(issue 31): a named run folder is that run, never another's; `resume=auto` alone picks only a run on
the same data; a resume keeps config.yaml as the run started (changes go to resumes.yaml); a
finished run is said to be finished, not reported as a new result; a restarted SLURM job continues
its own folder without `resume=auto`, and no other job takes it over."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from trashseg.errors import one_line
from trashseg.training import run as run_module
from trashseg.training.run_config import plain_config
from trashseg.training.module import SegmentationModule
from trashseg.training.resuming.changes import finished_by
from trashseg.training.resuming.target import current_config, find_resume_checkpoint, named_run_folder
from trashseg.training.callbacks.run_folder import JOB_FILE

REPO = Path(__file__).resolve().parents[1]
# 6 steps an epoch (24 images in batches of 4), validated and checkpointed every 3
SMALL = ["experiment=quickstart", "data.num_workers=0", "data.batch_size=4", "data.val_batch_size=5", "logger=csv",
         "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0", "+trainer.enable_model_summary=false",
         "trainer.deterministic=true", "trainer.val_check_interval=0.5", "model.encoder_depth=3",
         "model.decoder.decoder_channels=[16,8,8]"]
JOB = {"SLURM_JOB_ID": "5001", "SLURM_ARRAY_JOB_ID": "5000", "SLURM_ARRAY_TASK_ID": "1", "SLURM_CLUSTER_NAME": "ci"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _outside_slurm(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CLUSTER_NAME", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def said():
    """The lines train() logs through Lightning's rank-zero logger."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def command(root: Path, runs: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*SMALL, f"data.root={root}", f"runs_dir={runs}", *overrides])


def last_of(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def one_epoch(synthetic_root, tmp_path_factory) -> Path:
    """A finished run of one epoch (trainer.max_epochs=1; copy it before changing it)."""
    runs = tmp_path_factory.mktemp("one_epoch")
    run_module.train(command(synthetic_root, runs, "trainer.max_epochs=1"), runs / "quickstart" / "first")
    return runs / "quickstart" / "first"


def copied(one_epoch: Path, tmp_path: Path) -> tuple[Path, Path]:
    runs = tmp_path / "runs"
    return runs, Path(shutil.copytree(one_epoch, runs / "quickstart" / "first"))


# ---------------------------------------------------------------- a named folder is that run

def test_a_named_new_folder_starts_a_run_there_and_never_continues_another(synthetic_root, one_epoch, tmp_path):
    """`hydra.run.dir=<new> resume=auto` continued the newest matching run in that run's folder and
    never made the named one. Run as typed; the same command again finds the named run finished."""
    runs, first = copied(one_epoch, tmp_path)
    before = (first / "checkpoints" / "last.ckpt").read_bytes()
    named = runs / "quickstart" / "named"
    typed = [sys.executable, str(REPO / "train.py"), *SMALL, f"data.root={synthetic_root}", f"runs_dir={runs}",
             "trainer.max_epochs=2", "resume=auto", f"hydra.run.dir={named}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    started = subprocess.run(typed, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert started.returncode == 0, started.stderr[-3000:]
    assert "resume=auto: runs/quickstart/named holds no run yet: a new run starts there" in started.stdout
    assert last_of(named)["global_step"] == 12 and "resumes.yaml" not in os.listdir(named)  # 2 epochs, from step 0
    assert (first / "checkpoints" / "last.ckpt").read_bytes() == before and not (first / "resumes.yaml").exists()

    again = subprocess.run(typed, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    out = again.stdout + again.stderr
    assert again.returncode == 0, again.stderr[-3000:]
    assert "runs/quickstart/named is finished: its last.ckpt is at step 12, where trainer.max_epochs=2 ends it" in out
    assert "best val/mIoU" not in out and "score it" not in out  # no old result printed as a new one


def test_resume_auto_in_a_named_folder_holding_no_last_ckpt_is_one_line(tmp_path):
    run = tmp_path / "runs" / "quickstart" / "named"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")  # a run, but nothing that continues it
    with pytest.raises(FileExistsError) as caught:
        find_resume_checkpoint("auto", tmp_path / "runs", "quickstart", run, {}, named=True)
    line = one_line(caught.value)
    assert "\n" not in line and f"{run} holds a run" in line and "give a new hydra.run.dir" in line


@pytest.mark.parametrize("mode, overrides, named", [
    (RunMode.RUN, ["hydra.run.dir=runs/x"], True),
    (RunMode.RUN, ["hydra.job.chdir=false"], False),
    (RunMode.MULTIRUN, ["hydra.sweep.dir=sweeps/y"], True),
    (RunMode.MULTIRUN, ["hydra.run.dir=runs/x"], False),  # a sweep's jobs live under the sweep folder
])
def test_the_folder_is_named_by_the_command_line(mode, overrides, named):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=quickstart", *overrides], return_hydra_config=True)
    cfg.hydra.mode = mode
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        assert named_run_folder() is named
    finally:
        HydraConfig.instance().cfg = saved


# ---------------------------------------------------------------- the same data, provenance kept

def test_resume_auto_never_picks_a_run_on_other_data(synthetic_root, one_epoch, tmp_path):
    """It picked the finished run of another data.root, trained 0 steps, printed its old best as
    the result and rewrote its config.yaml to the new root."""
    runs, first = copied(one_epoch, tmp_path)
    config_before, last_before = (first / "config.yaml").read_text(), (first / "checkpoints" / "last.ckpt").read_bytes()
    other = shutil.copytree(synthetic_root, tmp_path / "other")
    with pytest.raises(ValueError) as caught:
        run_module.train(command(other, runs, "trainer.max_epochs=1", "resume=auto"), tmp_path / "fresh")
    line = one_line(caught.value)
    assert "\n" not in line and "resume=auto: no run of 'quickstart'" in line and "start a new run" in line
    assert f"{first} (data.root ({str(synthetic_root)!r} -> {str(other)!r}))" in line
    assert (first / "config.yaml").read_text() == config_before
    assert (first / "checkpoints" / "last.ckpt").read_bytes() == last_before


def test_a_resume_keeps_config_yaml_as_the_run_started(synthetic_root, one_epoch, tmp_path):
    """The run named by its checkpoint, moved to a copy of its data and trained longer: config.yaml
    still says what the first epoch trained on, resumes.yaml what changed, and resume=auto on the
    new place finds the run through both."""
    runs, first = copied(one_epoch, tmp_path)
    config_before = (first / "config.yaml").read_text()
    moved = shutil.copytree(synthetic_root, tmp_path / "moved")
    run_module.train(command(moved, runs, "trainer.max_epochs=2", f"resume={first / 'checkpoints' / 'last.ckpt'}"),
                     tmp_path / "fresh")
    assert last_of(first)["global_step"] == 12
    assert (first / "config.yaml").read_text() == config_before  # data.root and max_epochs of the first part
    [entry] = yaml.safe_load((first / "resumes.yaml").read_text())
    assert entry["changed"] == {"data.root": {"was": str(synthetic_root), "now": str(moved)},
                                "trainer.max_epochs": {"was": 1, "now": 2}}
    now = current_config(first)
    assert now["data"]["root"] == str(moved) and now["trainer"]["max_epochs"] == 2
    longer = plain_config(command(moved, runs, "trainer.max_epochs=3", "resume=auto"))
    assert find_resume_checkpoint("auto", runs, "quickstart", tmp_path / "fresh2", longer) == first / "checkpoints" / "last.ckpt"


def test_a_finished_run_is_said_to_be_finished_not_reported_as_a_new_result(synthetic_root, one_epoch, tmp_path, said):
    runs, first = copied(one_epoch, tmp_path)
    last_before = (first / "checkpoints" / "last.ckpt").read_bytes()
    best = pd.read_csv(first / "metrics.csv")["val/mIoU"].max()
    metrics = run_module.train(command(synthetic_root, runs, "trainer.max_epochs=1", "resume=auto"), tmp_path / "fresh")
    assert metrics == {"best/val/mIoU": pytest.approx(best)}  # the run's own value, for a sweeper
    [line] = [s for s in said if "is finished" in s]
    assert f"{first} is finished: its last.ckpt is at step 6, where trainer.max_epochs=1 ends it" in line
    assert "larger trainer.max_epochs" in line and "without resume=" in line
    assert not [s for s in said if "best val/mIoU" in s or "run folder:" in s]
    assert (first / "checkpoints" / "last.ckpt").read_bytes() == last_before and not (first / "resumes.yaml").exists()
    assert not (tmp_path / "fresh").exists()


def test_finished_is_what_lightning_would_train_no_step_of(one_epoch):
    """The last checkpoint of a run validated every half epoch comes from inside its last epoch (Lightning
    counts the epoch processed only after it), yet fitting from it trains nothing."""
    last = last_of(one_epoch)
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 0  # the case that needs care
    assert finished_by(last, {"max_epochs": 1, "max_steps": -1}) == "trainer.max_epochs=1"
    assert finished_by(last, {"max_epochs": 2, "max_steps": -1}) is None
    assert finished_by(last, {"max_epochs": 2, "max_steps": 6}) == "trainer.max_steps=6"
    assert finished_by(last, {"max_epochs": 2, "max_steps": 7}) is None


# ---------------------------------------------------------------- a job its scheduler restarts

class Preempted(Exception):
    """Stands for SLURM stopping the job: the process ends where it is."""


def test_a_requeued_job_continues_its_own_folder_and_ends_as_if_never_stopped(synthetic_root, tmp_path, monkeypatch,
                                                                              said):
    runs = tmp_path / "runs"
    straight = runs / "quickstart" / "straight"
    run_module.train(command(synthetic_root, runs, "trainer.max_epochs=2"), straight)

    job = runs / "quickstart" / "job"
    for name, value in JOB.items():
        monkeypatch.setenv(name, value)

    def preempt(self, outputs, batch, batch_idx):
        if self.global_step == 8:
            raise Preempted

    with monkeypatch.context() as patch, pytest.raises(Preempted):
        patch.setattr(SegmentationModule, "on_train_batch_end", preempt, raising=False)
        run_module.train(command(synthetic_root, runs, "trainer.max_epochs=2"), job)
    assert yaml.safe_load((job / JOB_FILE).read_text()) == {"slurm_job_id": "5000_1", "slurm_cluster": "ci",
                                                            "restart_count": 0}
    assert last_of(job)["global_step"] == 6

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # what SLURM sets in the requeued job
    run_module.train(command(synthetic_root, runs, "trainer.max_epochs=2"), job)  # the same command: no resume=
    assert "SLURM job 5000_1 restarted (SLURM_RESTART_COUNT=1): continuing its run in " \
           f"{job} from checkpoints/last.ckpt" in said
    assert yaml.safe_load((job / JOB_FILE).read_text())["restart_count"] == 1
    a, b = last_of(straight), last_of(job)
    assert a["global_step"] == b["global_step"] == 12
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert (job / "metrics.csv").read_bytes() == (straight / "metrics.csv").read_bytes()


@pytest.mark.parametrize("job, restart", [
    ({**JOB, "SLURM_ARRAY_TASK_ID": "2"}, "1"),  # another task of the same array
    ({"SLURM_JOB_ID": "5001"}, "1"),  # the same number, but no array task
    ({**JOB, "SLURM_CLUSTER_NAME": "other"}, "1"),  # another cluster's job of that id
    (JOB, "0"),  # a second command in the same allocation, not a restart
])
def test_no_other_job_takes_the_folder_over(synthetic_root, one_epoch, tmp_path, monkeypatch, job, restart):
    runs, first = copied(one_epoch, tmp_path)
    (first / JOB_FILE).write_text(yaml.safe_dump({"slurm_job_id": "5000_1", "slurm_cluster": "ci", "restart_count": 0}))
    for name, value in {**job, "SLURM_RESTART_COUNT": restart}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(FileExistsError, match="already holds a run"):
        run_module.train(command(synthetic_root, runs, "trainer.max_epochs=2"), first)


def fake_job_run(folder: Path, config: dict, restart_count: int = 0, checkpoint: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / JOB_FILE).write_text(yaml.safe_dump({"slurm_job_id": "5000_1", "slurm_cluster": "ci",
                                                   "restart_count": restart_count}))
    (folder / "metrics.csv").write_text("epoch,step\n0,99\n")
    if checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    return folder


def test_a_restart_in_a_new_time_stamped_folder_finds_its_jobs_run(tmp_path, monkeypatch):
    """A requeued `sbatch` of a command without hydra.run.dir gets a new folder from Hydra: the job's
    run is the one it recorded (and this command continues), not the newest."""
    runs = tmp_path / "runs"
    typed = {"experiment_name": "quickstart", "optimizer": {"lr": 3e-3}}
    own = fake_job_run(runs / "quickstart" / "own", typed)
    fake_job_run(runs / "quickstart" / "other_settings", {**typed, "optimizer": {"lr": 1e-3}})
    os.utime(own / "checkpoints" / "last.ckpt", (1, 1))  # not the newest
    for name, value in {**JOB, "SLURM_RESTART_COUNT": "2"}.items():
        monkeypatch.setenv(name, value)
    fresh = runs / "quickstart" / "2026-12-06_10-00-00"
    assert find_resume_checkpoint(None, runs, "quickstart", fresh, typed) == own / "checkpoints" / "last.ckpt"
    assert find_resume_checkpoint(None, runs, "quickstart", fresh, typed, named=True) is None  # its folder is another
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert find_resume_checkpoint(None, runs, "quickstart", fresh, typed) is None  # another job: a new run


def test_a_job_restarted_before_its_first_checkpoint_starts_its_run_over(tmp_path, monkeypatch, said):
    run = fake_job_run(tmp_path / "runs" / "quickstart" / "job", {}, checkpoint=False)
    for name, value in {**JOB, "SLURM_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(name, value)
    assert find_resume_checkpoint(None, tmp_path / "runs", "quickstart", run, {}, named=True) is None
    assert f"SLURM job 5000_1 restarted (SLURM_RESTART_COUNT=1) before its run in {run} wrote checkpoints/last.ckpt: " \
           "starting that run over" in said
