"""A sweep job that stops on a user error: it records its one-line reason in `<job>/failed.txt`,
the sweep goes on to its other jobs under every launcher (basic, submitit_local, Optuna), its table
shows the job as failed, the sweep's last line is `error: <reason>` and it exits 2; so does a
submitit_local job killed mid-training, whose reason is the command that continues it. A sweep whose
every job was refused leaves nothing behind (what was in its folder before stays), submitit's `%j`
placeholder folder goes, and W&B groups a sweep's runs by the sweep."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

import small_runs
from small_runs import TINY as SMALL_SWEEP, explain, with_folds
from submitit.core.utils import pickle_load
from trashseg.inference.options import sweep_runs
from trashseg.tools import compare
from trashseg.training.callbacks.loggers import build_loggers
from trashseg.training.launching.sweeps import SweepSummary

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY = [o for o in SMALL_SWEEP if o != "logger=csv"]  # the W&B test keeps the default loggers
MISSING_FOLD = "fold 7: "  # how the data module's refusal of a fold without fold files starts
HANG_GUARD = 300  # a sweep that waits for a job that will never report is killed here, and fails


def run_train(*args: str) -> subprocess.CompletedProcess:
    return small_runs.run_train(*args, timeout=HANG_GUARD)


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def score_cell(stdout: str, job: str) -> str:
    """The best val/mIoU cell of the job's row in the sweep's table."""
    row = next(line for line in stdout.splitlines() if line.startswith(f"| {job} |"))
    return row.split(" | ")[2]


@pytest.fixture(scope="module")
def pool(synthetic_root, tmp_path_factory) -> Path:
    """The synthetic data with 3 fold files: fold 7 does not exist, a user error caught in train()."""
    return with_folds(synthetic_root, tmp_path_factory, 3)


def wandb_records(run_file: Path):
    """The protobuf records of an offline W&B run file (`run-<id>.wandb`): W&B's LevelDB-style log,
    a 7-byte file header, then 32 KiB blocks of records (crc32, length, type: 1 full, 2-4 first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = run_file.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # the rest of a block is padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def offline_run(job: Path):
    """The run record (group, display name) of the job's one offline W&B run."""
    (run_file,) = job.glob("wandb/offline-run-*/run-*.wandb")
    return next(r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run")


# ---------------------------------------------------------------- end to end

@pytest.mark.slow
def test_a_failed_job_under_the_basic_launcher_lets_the_sweep_go_on_and_ends_it_with_its_reason(pool, tmp_path, caplog):
    sweep = tmp_path / "folds"
    result = run_train("-m", *TINY, "logger=default", f"data.root={pool}", "data.fold=7,0", f"hydra.sweep.dir={sweep}",
                       f"runs_dir={tmp_path / 'runs'}")
    assert result.returncode == 2, explain(result)
    reason = (sweep / "0" / "failed.txt").read_text().strip()
    assert reason.startswith(MISSING_FOLD) and "\n" not in reason
    assert last_line(result.stderr) == f"error: {reason}", explain(result)  # the last thing the sweep prints
    assert (sweep / "1" / "checkpoints" / "best.ckpt").is_file(), explain(result)  # fold 0 ran after fold 7 failed
    assert score_cell(result.stdout, "0").startswith(f"failed: {MISSING_FOLD}")
    assert 0 <= float(score_cell(result.stdout, "1")) <= 1
    # the W&B run of a sweep's job is in the sweep's group, named by what the sweep varies
    run = offline_run(sweep / "1")
    assert (run.run_group, run.display_name) == (str(sweep), "data.fold=0")
    # the failed job's folder is no run: compare and the ensemble/OOF listing skip it without a warning
    with caplog.at_level(logging.INFO, logger="trashseg.compare"):
        assert compare.find_runs([sweep]) == [sweep / "1"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert MISSING_FOLD in caplog.text
    assert sweep_runs(sweep) == [sweep / "1"]


@pytest.mark.slow
def test_a_failed_submitit_job_ends_the_sweep_with_its_reason_instead_of_hanging(pool, tmp_path):
    sweep = tmp_path / "folds"
    result = run_train("-m", *TINY, "logger=csv", f"data.root={pool}", "data.fold=7,0", "hydra/launcher=submitit_local",
                       "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}", f"runs_dir={tmp_path / 'runs'}")
    assert result.returncode == 2, explain(result)
    assert last_line(result.stderr).startswith(f"error: {MISSING_FOLD}"), explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    assert score_cell(result.stdout, "0").startswith(f"failed: {MISSING_FOLD}")
    assert (sweep / "1" / "checkpoints" / "best.ckpt").is_file()
    # submitit's launching process made `.submitit/%j` unfilled; only the jobs' own log folders stay
    assert sorted(p.name for p in (sweep / ".submitit").iterdir()) == sorted(
        p.parent.name for p in (sweep / ".submitit").glob("*/*_submitted.pkl"))
    assert len(list((sweep / ".submitit").iterdir())) == 2


@pytest.mark.slow
def test_an_optuna_trial_that_fails_is_a_failed_trial_and_the_search_goes_on(pool, tmp_path):
    sweep = tmp_path / "search"
    result = run_train("-m", *TINY, "logger=csv", f"data.root={pool}", "hydra/sweeper=optuna",
                       "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=2",
                       "hydra.sweeper.direction=maximize", "data.fold=choice(7,0)",  # seed 0 draws fold 0, then 7
                       f"hydra.sweep.dir={sweep}", f"runs_dir={tmp_path / 'runs'}")
    assert result.returncode == 2, explain(result)
    failed = [job for job in sweep.iterdir() if (job / "failed.txt").is_file()]
    trained = [job for job in sweep.iterdir() if (job / "metrics.csv").is_file()]
    assert len(failed) == len(trained) == 1, explain(result)
    assert "Failed experiment" in result.stdout + result.stderr  # the sweeper told Optuna: a failed trial
    # the search finished: its best trial is the one that trained, with that run's best val/mIoU
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"] == {"data.fold": 0}
    assert best["best_value"] == pytest.approx(pd.read_csv(trained[0] / "metrics.csv")["val/mIoU"].max(), abs=1e-6)
    assert last_line(result.stderr).startswith(f"error: {MISSING_FOLD}"), explain(result)


@pytest.mark.slow
@pytest.mark.parametrize("sampler, end", [
    ("random", "No trials are completed yet"),  # Study.best_trial with every trial failed
    ("grid", "`Study.stop` is supposed to be invoked"),  # the grid's end after a failed (last) trial
])
def test_an_optuna_search_that_its_failed_trials_stop_ends_in_the_sweeps_table(pool, tmp_path, sampler, end):
    sweep = tmp_path / "search"
    result = run_train("-m", *TINY, "logger=csv", f"data.root={pool}", "hydra/sweeper=optuna",
                       f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
                       "hydra.sweeper.direction=maximize", "data.fold=choice(7,8)",
                       f"hydra.sweep.dir={sweep}", f"runs_dir={tmp_path / 'runs'}")
    output = result.stdout + result.stderr
    assert result.returncode == 2, explain(result)  # was 1: the sweeper's error, before the table
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output, explain(result)
    assert f"the Optuna search ended on its failed trials ({end}" in output, explain(result)
    assert "no job started: the sweep left nothing" in result.stdout, explain(result)  # the table's end, as any sweep's
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    folds = {line.split(":")[1].strip() for line in errors}  # the random sampler may draw one fold twice
    assert len(errors) == len(folds) and folds <= {"fold 7", "fold 8"} and folds, explain(result)
    if sampler == "grid":
        assert folds == {"fold 7", "fold 8"}, explain(result)
    assert last_line(result.stderr) in errors


@pytest.mark.slow
def test_a_sweep_whose_every_job_is_refused_leaves_nothing_but_what_was_there(pool, tmp_path):
    runs = tmp_path / "runs"
    result = run_train("-m", *TINY, "logger=csv", f"data.root={pool}", "data.fold=7,8", f"runs_dir={runs}")
    assert result.returncode == 2, explain(result)
    assert last_line(result.stderr).startswith("error: fold 8: "), explain(result)
    assert not runs.exists(), sorted(map(str, runs.rglob("*")))  # the sweep folder and the parents it made

    user = tmp_path / "mine"  # a folder the user already keeps things in, given as the sweep folder
    (user / "notes").mkdir(parents=True)
    (user / "notes" / "plan.md").write_text("fold 7 first\n")
    (user / "README").write_text("mine\n")
    before = sorted(p.relative_to(user) for p in user.rglob("*"))
    result = run_train("-m", *TINY, "logger=csv", f"data.root={pool}", "data.fold=7,8", "hydra/launcher=submitit_local",
                       "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={user}", f"runs_dir={runs}")
    assert result.returncode == 2, explain(result)
    assert sorted(p.relative_to(user) for p in user.rglob("*")) == before
    assert (user / "notes" / "plan.md").read_text() == "fold 7 first\n"


def local_job_process(sweep: Path, job_num: int) -> int | None:
    """The pid of the task process running the sweep's job `job_num` under submitit_local (the
    child of its controller, whose pid is the job's id), None until it runs."""
    for submitted in sweep.glob(".submitit/*/*_submitted.pkl"):
        if pickle_load(submitted).args[2] == job_num:  # the launcher's (overrides, dir key, job num, ...)
            controller = submitted.parent.name
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # a process that ended while listed
                if fields[1] == controller:  # its parent's pid
                    return int(stat.parent.name)
    return None


@pytest.mark.slow
def test_a_submitit_local_job_killed_mid_training_is_a_failed_job_whose_line_continues_it(synthetic_root, tmp_path):
    sweep, runs = tmp_path / "killed", tmp_path / "runs"
    args = [o for o in TINY if not o.startswith("trainer.max_epochs=")]
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), "-m", *args, "logger=csv",
                                "trainer.max_epochs=1,30", f"data.root={synthetic_root}",
                                "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20",
                                f"hydra.sweep.dir={sweep}", f"runs_dir={runs}"],
                               cwd=REPO, env=environ, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        last = sweep / "1" / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + HANG_GUARD
        while not (last.exists() and (task := local_job_process(sweep, 1))):
            assert process.poll() is None and time.monotonic() < deadline, "job 1 never wrote last.ckpt"
            time.sleep(0.1)
        os.kill(task, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        out, err = process.communicate(timeout=HANG_GUARD)
    finally:
        process.kill()
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)

    assert result.returncode == 2, explain(result)
    assert "Traceback" not in err and "UncompletedJobError" not in out + err, explain(result)
    assert 0 <= float(score_cell(out, "0")) <= 1
    assert score_cell(out, "1").startswith("failed: job "), explain(result)
    prefix = "error: job "
    assert last_line(err).startswith(prefix), explain(result)
    assert (sweep / "1" / "failed.txt").read_text() == last_line(err).removeprefix("error: ") + "\n"
    ended, _, command = last_line(err).partition(": continue it with ")
    assert ended.endswith("ended without a result (submitit_local: FINISHED)"), explain(result)
    command = shlex.split(command)
    assert command[:2] == ["python", "train.py"] and command[-2:] == ["resume=auto", f"hydra.run.dir={sweep / '1'}"]
    steps = lambda: torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert steps() < 30 * 2

    continued = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=environ, capture_output=True, text=True,
                               timeout=HANG_GUARD)
    assert continued.returncode == 0, explain(continued)
    assert steps() == 30 * 2  # continued from the killed job's last.ckpt to its end, in its own folder
    assert not (sweep / "1" / "failed.txt").exists() and not runs.exists()


# ---------------------------------------------------------------- the sweep's end, on folders made by hand

def sweep_config(sweep: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=quickstart", f"hydra.sweep.dir={sweep}", *overrides],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = ["experiment=quickstart", "data.fold=0,1"]
    return cfg


def make_job(job: Path, fold: int, failed: str | None) -> None:
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment=quickstart", f"data.fold={fold}"]))
    (job / "train.log").write_text("")
    if failed:
        (job / "failed.txt").write_text(failed + "\n")


def test_a_refused_sweep_keeps_the_users_runs_and_names_each_reason_once(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    (sweep / "0" / "checkpoints").mkdir(parents=True)  # the user's earlier run, in the folder job 0 gets
    (sweep / "0" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    cfg = sweep_config(sweep)
    summary = SweepSummary()
    summary.on_multirun_start(cfg)
    make_job(sweep / "0", 0, "runs/sweep/0 already holds a run; continue it with resume=auto")
    make_job(sweep / "1", 1, "runs/sweep/0 already holds a run; continue it with resume=auto")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    with pytest.raises(SystemExit) as stop:
        summary.on_multirun_end(cfg)
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == ["error: runs/sweep/0 already holds a run; continue it with resume=auto"]
    assert "| 0 | data.fold=0 | failed: runs/sweep/0 already holds" in out
    assert (sweep / "0" / "checkpoints" / "last.ckpt").read_bytes() == b"weights"  # a job started here: nothing goes
    assert (sweep / "1").is_dir() and (sweep / "multirun.yaml").is_file()


def test_a_sweep_without_failures_ends_normally_and_its_placeholder_folder_goes(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    cfg = sweep_config(sweep, "hydra/launcher=submitit_local")
    summary = SweepSummary()
    summary.on_multirun_start(cfg)
    make_job(sweep / "0", 0, None)
    (sweep / ".submitit" / "%j").mkdir(parents=True)  # made by the launching process, never filled
    (sweep / ".submitit" / "4242").mkdir()
    (sweep / ".submitit" / "4242" / "4242_0_log.out").write_text("job log\n")
    summary.on_multirun_end(cfg)  # no SystemExit
    assert sorted(p.name for p in (sweep / ".submitit").iterdir()) == ["4242"]
    assert "| 0 | data.fold=0 | failed | - |" in capsys.readouterr().out  # no record: failed, no reason


# ---------------------------------------------------------------- W&B group outside a sweep

def test_a_single_run_is_grouped_by_its_experiment_and_a_users_group_always_wins(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        single = compose("train", overrides=["experiment=quickstart", "logger=default"])
        named = compose("train", overrides=["experiment=quickstart", "logger=default", "logger.wandb.group=mine",
                                            f"hydra.sweep.dir={tmp_path / 'sweep'}"], return_hydra_config=True)
    groups = {}
    for key, cfg, hydra_cfg in (("single", single, None), ("named sweep job", named, named)):
        saved = HydraConfig.instance().cfg
        if hydra_cfg is not None:  # inside a sweep: Hydra's own config says so
            with open_dict(hydra_cfg):
                hydra_cfg.hydra.mode, hydra_cfg.hydra.job.num = RunMode.MULTIRUN, 0
            HydraConfig.instance().set_config(hydra_cfg)
        try:
            plain = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
            (logger,) = [lg for lg in build_loggers(plain, tmp_path / key, None) if type(lg).__name__ == "WandbLogger"]
            groups[key] = logger.experiment.group
            logger.experiment.finish()
        finally:
            HydraConfig.instance().cfg = saved
    assert groups == {"single": "quickstart", "named sweep job": "mine"}
