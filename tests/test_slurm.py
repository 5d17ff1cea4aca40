"""Sweeps on a real one-node SLURM cluster (tests/slurm_cluster.py: Debian's SLURM 22.05 with
accounting, one cluster per pytest worker), run as a user runs them: `python train.py -m ...
hydra/launcher=submitit_slurm`. A fold sweep that OOF scores, a 2-task gloo DDP job with one run
folder, a job that fails on a setup error ending the sweep in its one line, a job that SLURM
requeues mid-training continuing its own folder, a job scancelled mid-training showing as a failed
job whose line continues it, and a task's torch threads equal to its
--cpus-per-task (with the rule itself unit-tested without SLURM)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from small_runs import TINY, explain, with_folds
from trashseg.inference.oof import main as oof
from trashseg.training.launching import threads as threads_module
from trashseg.training.launching.threads import plan_threads

REPO = Path(__file__).resolve().parents[1]
# cpus_per_task as a cluster user sets it; timeout_min is the job's --time
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]


def start_train(cluster, *args: str) -> subprocess.Popen:
    """`python train.py ARGS` against `cluster`, stdout and stderr in one stream (in the order printed)."""
    env = dict(cluster.env, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, sweep: Path, cluster, timeout: float) -> subprocess.CompletedProcess:
    """Wait for a train.py started by start_train; past `timeout` (a hang guard) fail with its jobs' logs."""
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"train.py still running after {timeout} s\n--- its output\n{out[-3000:]}\n"
                    f"--- job logs\n{job_logs(sweep)[-4000:]}\n--- cluster\n{cluster.logs()}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


def train(cluster, sweep: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return finish(start_train(cluster, "-m", *args, f"hydra.sweep.dir={sweep}"), sweep, cluster, timeout)


def job_logs(sweep: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(sweep.glob(".submitit/*/*_log.*")))


def job_ids(sweep: Path) -> list[str]:
    """SLURM ids of the sweep's jobs (`123` alone, `123_0 123_1` for an array), from submitit's folders."""
    return sorted(p.parent.name for p in sweep.glob(".submitit/*/*_submitted.pkl"))


def run_folders(sweep: Path) -> list[str]:
    return sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def sacct_states(cluster, job: str, timeout: float = 60) -> list[str]:
    """Every state accounting recorded for `job`'s allocations (a requeued job: REQUEUED, then its
    last), once they have ended: a job's result file comes a moment before its end reaches sacct."""
    deadline = time.monotonic() + timeout
    while True:
        out = cluster.command("sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job)
        states = [line.split()[0] for line in out.splitlines() if line.strip()]
        if not {"PENDING", "RUNNING", "COMPLETING"} & set(states) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


@pytest.fixture(scope="module")
def two_folds(synthetic_root, tmp_path_factory) -> Path:
    return with_folds(synthetic_root, tmp_path_factory, 2)


# ---------------------------------------------------------------- sweeps on the cluster

@pytest.mark.slow
@pytest.mark.slurm
def test_a_fold_sweep_through_submitit_slurm_is_scored_by_oof(slurm_cluster, two_folds, tmp_path):
    sweep = tmp_path / "folds"
    result = train(slurm_cluster, sweep, *TINY, f"data.root={two_folds}", "data.fold=0,1", *SLURM,
                   f"runs_dir={tmp_path / 'runs'}", timeout=300)
    assert result.returncode == 0, explain(result) + job_logs(sweep)[-3000:]
    assert run_folders(sweep) == ["0", "1"]
    assert all((sweep / f / "checkpoints" / "best.ckpt").is_file() for f in ("0", "1"))
    [array] = {job.split("_")[0] for job in job_ids(sweep)}  # one SLURM array, one task a fold
    assert sacct_states(slurm_cluster, array) == ["COMPLETED", "COMPLETED"]
    # each job's threads come from its own SLURM task, not divided again
    assert "1 core(s) for this process: SLURM task, --cpus-per-task=1" in (sweep / "0" / "train.log").read_text()
    assert oof([str(sweep), "--num-workers", "0", "--out", str(tmp_path / "oof")]) == 0
    assert "CV mIoU" in (tmp_path / "oof" / "oof.md").read_text()


@pytest.mark.slow
@pytest.mark.slurm
def test_a_two_task_gloo_ddp_job_writes_one_run_folder(slurm_cluster, two_folds, tmp_path):
    sweep = tmp_path / "ddp"
    result = train(slurm_cluster, sweep, *TINY, f"data.root={two_folds}", "data.fold=0", "trainer=ddp_cpu",
                   "trainer.devices=2", *SLURM, "hydra.launcher.tasks_per_node=2", f"runs_dir={tmp_path / 'runs'}",
                   timeout=300)
    assert result.returncode == 0, explain(result) + job_logs(sweep)[-3000:]
    assert run_folders(sweep) == ["0"]
    assert sorted(p.name for p in (sweep / "0" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (tmp_path / "runs").exists() and not (REPO / "outputs").exists()  # no second folder anywhere
    assert len(pd.read_csv(sweep / "0" / "metrics.csv").dropna(subset=["val/mIoU"])) == 1  # one run's metrics
    logs = job_logs(sweep)
    assert logs.count("MEMBER: 2/2") == 1, logs[-3000:]  # Lightning saw SLURM's second task as rank 1, once


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_failing_on_a_setup_error_ends_the_sweep_with_its_one_line_last(slurm_cluster, two_folds, tmp_path):
    sweep = tmp_path / "fails"
    # 2 DDP processes a job but SLURM starts 1 task (tasks_per_node left at 1): every job stops in setup
    result = train(slurm_cluster, sweep, *TINY, f"data.root={two_folds}", "data.fold=0,1", "trainer=ddp_cpu",
                   "trainer.devices=2", *SLURM, f"runs_dir={tmp_path / 'runs'}", timeout=90)
    printed = [line for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode != 0, explain(result)
    assert printed[-1].startswith("error: ") and "hydra.launcher.tasks_per_node=2" in printed[-1], explain(result)
    assert "Traceback" not in result.stdout and "UncompletedJobError" not in result.stdout, explain(result)
    for job in ("0", "1"):  # the sweep went on to the second job, and its table shows both as failed
        assert re.search(rf"^\| {job} \|.*failed", result.stdout, re.M), explain(result)
    assert not list(sweep.glob("*/checkpoints"))


# 40 epochs of 6 steps, a checkpoint every 3 steps: the job is requeued at its first last.ckpt,
# with some 20 s of training still to go
REQUEUED = ["experiment=quickstart", "data.num_workers=0", "data.batch_size=4", "data.val_batch_size=5", "logger=csv",
            "trainer.enable_progress_bar=false", "trainer.max_epochs=40", "trainer.val_check_interval=0.5",
            "trainer.deterministic=true", "trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0",
            "+trainer.enable_model_summary=false", "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]"]
STEPS = 40 * 6


def wait_for(condition, what: str, timeout: float, explain_failure) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen after {timeout} s\n{explain_failure()}")
        time.sleep(0.1)


def global_step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_requeued_mid_training_continues_its_own_folder_to_the_same_metrics(slurm_cluster, synthetic_root,
                                                                                   tmp_path):
    args = [*REQUEUED, f"data.root={synthetic_root}", *SLURM, f"runs_dir={tmp_path / 'runs'}"]
    straight, requeued = tmp_path / "straight", tmp_path / "requeued"
    reference = start_train(slurm_cluster, "-m", *args, f"hydra.sweep.dir={straight}")  # never interrupted
    process = start_train(slurm_cluster, "-m", *args, f"hydra.sweep.dir={requeued}")
    try:
        last = requeued / "0" / "checkpoints" / "last.ckpt"
        wait_for(last.exists, "the job's first last.ckpt", 180, lambda: job_logs(requeued)[-3000:])
        [job] = job_ids(requeued)
        slurm_cluster.command("scontrol", "requeue", job)
        pending = lambda: slurm_cluster.command("squeue", "-h", "-j", job, "-o", "%T").strip() == "PENDING"
        wait_for(pending, f"job {job} pending again after the requeue", 60, slurm_cluster.logs)
        interrupted_at = global_step(last)  # its processes are gone: this is what the restart continues
        # a requeued job waits out a BeginTime about two minutes ahead; start it now
        slurm_cluster.command("scontrol", "update", f"JobId={job}", "StartTime=now")
        result = finish(process, requeued, slurm_cluster, timeout=300)
        uninterrupted = finish(reference, straight, slurm_cluster, timeout=300)
    finally:  # a failed wait leaves neither sweep behind (their jobs go with the cluster)
        process.kill()
        reference.kill()

    assert uninterrupted.returncode == 0, explain(uninterrupted)
    assert result.returncode == 0, explain(result) + job_logs(requeued)[-4000:]
    assert interrupted_at < STEPS, f"the run had ended (step {interrupted_at}) before the requeue reached it"
    assert "REQUEUED" in sacct_states(slurm_cluster, job)
    assert run_folders(requeued) == ["0"] and not (tmp_path / "runs").exists()
    assert global_step(last) == STEPS
    continued = pd.read_csv(requeued / "0" / "metrics.csv")
    pd.testing.assert_frame_equal(continued, pd.read_csv(straight / "0" / "metrics.csv"), check_exact=True)
    weights = [torch.load(s / "0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
               for s in (straight, requeued)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_scancelled_mid_training_is_a_failed_job_whose_line_continues_it(slurm_cluster, synthetic_root,
                                                                             tmp_path):
    sweep, runs = tmp_path / "killed", tmp_path / "runs"
    # job 0: one epoch; job 1: REQUEUED's 40, scancelled at its first last.ckpt
    args = [o for o in REQUEUED if not o.startswith("trainer.max_epochs=")]
    process = start_train(slurm_cluster, "-m", *args, "trainer.max_epochs=1,40", f"data.root={synthetic_root}",
                          *SLURM, f"runs_dir={runs}", f"hydra.sweep.dir={sweep}")
    try:
        last = sweep / "1" / "checkpoints" / "last.ckpt"
        wait_for(last.exists, "job 1's first last.ckpt", 180, lambda: job_logs(sweep)[-3000:])
        job = next(j for j in job_ids(sweep) if j.endswith("_1"))
        slurm_cluster.command("scancel", job)
        result = finish(process, sweep, slurm_cluster, timeout=180)
    finally:
        process.kill()

    out = result.stdout
    assert result.returncode == 2, explain(result) + job_logs(sweep)[-3000:]
    assert "Traceback" not in out and "UncompletedJobError" not in out, explain(result)
    assert sacct_states(slurm_cluster, job)[0].startswith("CANCELLED")
    # the table: job 0 with its score, job 1 failed with how it ended; the sweep's last line says how to go on
    assert re.search(r"^\| 0 \| trainer\.max_epochs=1 \| 0\.\d{4} \| 0 \|", out, re.M), explain(result)
    killed_row = rf"^\| 1 \| trainer\.max_epochs=40 \| failed: job {job} ended CANCELLED \(sacct\) without finishing"
    assert re.search(killed_row, out, re.M), explain(result)
    last_line = [line for line in out.splitlines() if line.strip()][-1]
    prefix = f"error: job {job} ended CANCELLED (sacct) without finishing: continue it with "
    assert last_line.startswith(prefix), explain(result)
    command = shlex.split(last_line.removeprefix(prefix))
    assert command[:2] == ["python", "train.py"] and command[-2:] == ["resume=auto", f"hydra.run.dir={sweep / '1'}"]
    assert (sweep / "1" / "failed.txt").read_text() == last_line.removeprefix("error: ") + "\n"
    stopped_at = global_step(last)
    assert stopped_at < STEPS

    env = dict(os.environ, OMP_NUM_THREADS="1")
    continued = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=180)
    assert continued.returncode == 0, explain(continued)
    assert global_step(last) == STEPS  # trained on from the killed job's last.ckpt to its end, in its folder
    assert not (sweep / "1" / "failed.txt").exists() and not runs.exists()
    assert run_folders(sweep) == ["0", "1"]


# ---------------------------------------------------------------- a task's threads

THREADS = ("import sys, torch; from trashseg.training.launching.threads import size_threads; "
           "plan = size_threads({'threads': 'auto', 'data': {'num_workers': 4}, "
           "'trainer': {'accelerator': 'cpu', 'strategy': 'ddp', 'devices': int(sys.argv[1])}}); "
           "print('torch threads', torch.get_num_threads(), plan.reason)")


@pytest.mark.slurm
@pytest.mark.parametrize("tasks,cpus", [(1, 1), (1, 2), (2, 1)])
def test_a_slurm_tasks_torch_threads_equal_its_cpus_per_task(slurm_cluster, tasks, cpus):
    env = {k: v for k, v in slurm_cluster.env.items() if k != "OMP_NUM_THREADS"}  # torch's own default
    out = subprocess.run(["srun", f"-n{tasks}", f"-c{cpus}", sys.executable, "-c", THREADS, str(tasks)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("torch threads")]
    assert lines == [f"torch threads {cpus} SLURM task, --cpus-per-task={cpus}, {cpus} in its CPU affinity"] * tasks


# ---------------------------------------------------------------- the rule, without SLURM

@pytest.fixture
def node(monkeypatch):
    """node(cores, **env): a process with `cores` in its affinity, torch's default of as many threads,
    and no launcher variables but `env`."""
    def set_up(cores: int, **env: str) -> None:
        for key in [k for k in os.environ if k.startswith("SLURM_")] + ["LOCAL_WORLD_SIZE"]:
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(threads_module.torch, "get_num_threads", lambda: cores)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    return set_up


DDP2 = {"accelerator": "cpu", "strategy": "ddp", "devices": 2}
SRUN_TASK = {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "train", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1",
             "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2"}


def test_a_srun_task_keeps_its_own_cpus_and_says_so(node):
    node(4, **SRUN_TASK, SLURM_CPUS_PER_TASK="4")  # srun -n2 -c4 on 8 cores: this task is bound to its 4
    plan = plan_threads("auto", 8, DDP2)
    assert (plan.cores, plan.threads, plan.workers) == (4, 4, 4)  # not 4 / 2 processes
    assert "SLURM task, --cpus-per-task=4, 4 in its CPU affinity" in plan.line()


def test_a_srun_task_that_slurm_did_not_bind_takes_its_cpus_per_task(node):
    node(8, **SRUN_TASK, SLURM_CPUS_PER_TASK="4")  # TaskPlugin=task/none: the affinity is the whole node
    assert plan_threads("auto", 8, DDP2).cores == 4


def test_processes_sharing_one_affinity_still_divide_it(node):
    node(4, LOCAL_WORLD_SIZE="2")  # submitit_local's ranks, torchrun
    assert plan_threads("auto", 8, DDP2).cores == 2
    node(4)  # Lightning's own DDP launcher, from trainer.devices
    plan = plan_threads("auto", 8, DDP2)
    assert plan.cores == 2 and "4 in its CPU affinity / 2 process(es) per node" in plan.line()
    # the batch script itself (no step), and an interactive job where Lightning starts the ranks in one task
    node(4, SLURM_JOB_ID="7", SLURM_NTASKS="1", SLURM_CPUS_PER_TASK="4")
    assert plan_threads("auto", 8, DDP2).cores == 2
    node(4, **{**SRUN_TASK, "SLURM_JOB_NAME": "bash", "SLURM_NTASKS": "1"}, SLURM_CPUS_PER_TASK="4")
    assert plan_threads("auto", 8, DDP2).cores == 2
