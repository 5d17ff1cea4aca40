"""The launch checks judge a job as Lightning and submitit will actually run it (issue 31): the
strategy Lightning resolves (`auto` on several devices is DDP that re-runs the script), the width of
the sweeper that starts the jobs (Optuna's n_jobs), the GPUs the sweep was given (its
CUDA_VISIBLE_DEVICES, which submitit's local executor replaces), and submitit's ranks over the
distributed variables a shell may still hold."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import open_dict

from small_runs import TINY, explain, run_train
from trashseg.training.launching.jobs import DISTRIBUTED_VARIABLES, SWEEP_GPUS, Job, LaunchError, check_job, \
    prepare_job, trainer_processes

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(autouse=True)
def clean_process(monkeypatch):
    """Each test starts from a shell without distributed variables or a recorded allotment, and
    whatever the code under test exports or sets is undone after it."""
    for name in (*DISTRIBUTED_VARIABLES, SWEEP_GPUS, "CUDA_VISIBLE_DEVICES", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    rank = rank_zero_only.rank
    yield
    rank_zero_only.rank = rank


# ---------------------------------------------------------------- the strategy as Lightning resolves it

def lightning_runs(trainer: dict, gpus: int) -> tuple[int, bool]:
    """(devices a node, whether ranks re-run the script) as Lightning's own connector decides, with
    `gpus` CUDA devices simulated on this CPU machine."""
    from lightning.fabric.accelerators import cuda
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.accelerators import cuda as pytorch_cuda
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    with mock.patch.object(cuda, "num_cuda_devices", return_value=gpus), \
            mock.patch.object(pytorch_cuda, "num_cuda_devices", return_value=gpus), \
            mock.patch.object(CUDAAccelerator, "is_available", return_value=gpus > 0), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "srun is available but not used" on a machine with SLURM installed
        connector = _AcceleratorConnector(devices=trainer["devices"], num_nodes=trainer.get("num_nodes", 1),
                                          accelerator=trainer["accelerator"], strategy=trainer["strategy"])
    return len(connector._parallel_devices), isinstance(connector.strategy.launcher, _SubprocessScriptLauncher)


CASES = [("cpu", 1, 1, "auto"), ("cpu", 2, 1, "auto"), ("cpu", 1, 2, "auto"), ("cpu", 2, 2, "auto"),
         ("cpu", 2, 1, "ddp"), ("cpu", 2, 1, "ddp_spawn"), ("cpu", 2, 1, "ddp_fork"), ("cpu", 2, 1, "ddp_notebook"),
         ("cpu", 2, 1, "ddp_find_unused_parameters_true"), ("cpu", 1, 1, "ddp"),
         ("gpu", 1, 1, "auto"), ("gpu", 2, 1, "auto"), ("gpu", -1, 1, "auto"), ("gpu", "auto", 1, "auto"),
         ("gpu", [1, 3], 1, "auto"), ("gpu", "0,1", 1, "fsdp"), ("gpu", -1, 1, "ddp_spawn"), ("gpu", 1, 4, "auto")]


@pytest.mark.parametrize("accelerator,devices,num_nodes,strategy", CASES)
def test_the_strategy_is_judged_as_lightnings_connector_resolves_it(accelerator, devices, num_nodes, strategy):
    trainer = {"accelerator": accelerator, "devices": devices, "num_nodes": num_nodes, "strategy": strategy}
    processes = trainer_processes(trainer, gpus_visible=4)
    assert (processes.per_node, processes.reruns_script) == lightning_runs(trainer, gpus=4)


AUTO2 = {"accelerator": "cpu", "devices": 2, "strategy": "auto", "num_nodes": 1}  # trainer=cpu trainer.devices=2


def test_strategy_auto_on_two_devices_is_ddp_and_refused_in_a_basic_sweep():
    with pytest.raises(LaunchError, match=r"hydra/launcher=submitit_local hydra.launcher.tasks_per_node=2") as err:
        check_job(AUTO2, Job(multirun=True, launcher="basic", job_num=0), gpus_visible=0)
    assert "\n" not in str(err.value) and "ddp in Lightning" in str(err.value)
    gpus = {"accelerator": "gpu", "devices": -1, "strategy": "auto"}  # trainer=gpu trainer.devices=-1 on 4 GPUs
    with pytest.raises(LaunchError, match=r"tasks_per_node=4"):
        check_job(gpus, Job(True, "basic", 0), gpus_visible=4)
    check_job({**AUTO2, "devices": 1}, Job(True, "basic", 0), 0)  # one process: nothing to re-run
    check_job({**AUTO2, "num_nodes": 2, "devices": 1}, Job(True, "basic", 0), 0)  # one process a node
    check_job(AUTO2, Job(False, "basic", 0), 0)  # a single run: Lightning starts its rank 1 itself


def test_strategy_auto_on_two_devices_takes_two_submitit_tasks():
    check_job(AUTO2, Job(True, "submitit_local", 0, tasks=2, cluster="local"), 0)
    with pytest.raises(LaunchError, match=r"has 1 task\(s\) but the trainer runs 2 .*tasks_per_node=2"):
        check_job(AUTO2, Job(True, "submitit_local", 0, tasks=1, cluster="local"), 0)
    gpus = {"accelerator": "gpu", "devices": 4, "strategy": "auto", "num_nodes": 2}
    check_job(gpus, Job(True, "submitit_slurm", 0, tasks=8, cluster="slurm"), 4)
    with pytest.raises(LaunchError, match=r"tasks_per_node=4 hydra.launcher.nodes=2"):
        check_job(gpus, Job(True, "submitit_slurm", 0, tasks=2, cluster="slurm"), 4)


def test_an_unknown_strategy_is_one_line_naming_lightnings():
    with pytest.raises(LaunchError, match=r"trainer.strategy=dpp is not one of Lightning's strategies; .*ddp_spawn") as err:
        check_job({**AUTO2, "strategy": "dpp"}, Job(True, "basic", 0), 0)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- a job of a submitit_local sweep, simulated

@pytest.fixture
def sweep_job(monkeypatch, tmp_path):
    """A job of a submitit_local sweep as it reaches prepare_job: its config composed from `overrides`;
    the sweep's process started with CUDA_VISIBLE_DEVICES=`sweep_gpus` (unset: None) ran the Hydra
    callbacks of train.yaml; then the job's process: submitit's environment for task `rank` of
    `tasks`, the GPUs submitit shows it (submitit 1.5.4's local executor sets CUDA_VISIBLE_DEVICES to
    0..gpus_per_node-1 in every job, local.py `_submit_command`) and `physical` GPUs in the machine
    for NVML."""
    saved = HydraConfig.instance().cfg

    def make(overrides: list[str], job_num: int, physical: int, tasks: int = 1, rank: int = 0,
             sweep_gpus: str | None = None):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("train", overrides=["hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}", *overrides],
                          return_hydra_config=True)
        if sweep_gpus is not None:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", sweep_gpus)
        for callback in cfg.hydra.callbacks.values():  # in the sweep's process, before it launches the jobs
            instantiate(callback).on_multirun_start(config=cfg)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.job.num = job_num
        HydraConfig.instance().set_config(cfg)
        shown = ",".join(str(k) for k in range(cfg.hydra.launcher.gpus_per_node or 0))
        for key, value in dict(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID="4242", SUBMITIT_LOCAL_NTASKS=str(tasks),
                               SUBMITIT_LOCAL_JOB_NUM_NODES="1", SUBMITIT_LOCAL_NODEID="0",
                               SUBMITIT_LOCAL_GLOBALID=str(rank), SUBMITIT_LOCAL_LOCALID=str(rank),
                               CUDA_VISIBLE_DEVICES=shown).items():
            monkeypatch.setenv(key, value)
        shown_count = len([g for g in shown.split(",") if g])
        monkeypatch.setattr(torch.cuda, "device_count", lambda: shown_count)
        monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: physical)
        return cfg

    yield make
    HydraConfig.instance().cfg = saved


def test_optuna_trials_side_by_side_take_their_width_from_n_jobs(sweep_job):
    search = ["experiment=quickstart", "hparams_search=quickstart_optuna", "trainer=gpu", "hydra.launcher.gpus_per_node=4"]
    cfg = sweep_job([*search, "hydra.sweeper.n_jobs=4"], job_num=6, physical=4)
    assert list(prepare_job(cfg)["devices"]) == [2]  # trial 6 in slot 6 mod 4
    cfg = sweep_job([*search, "hydra.sweeper.n_jobs=8"], job_num=0, physical=4)
    with pytest.raises(LaunchError, match=r"4 GPUs hold 4 job\(s\) of 1 GPU\(s\) at once, but the sweep may start 8 at "
                                          r"once; set hydra.sweeper.n_jobs=4$"):
        prepare_job(cfg)


def test_jobs_of_a_sweep_given_gpus_4_to_7_run_on_4_to_7(sweep_job):
    cfg = sweep_job(["experiment=quickstart", "trainer=gpu", "hydra.sweeper.max_batch_size=4",
                     "hydra.launcher.gpus_per_node=4"], job_num=5, physical=8, sweep_gpus="4,5,6,7")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # what submitit's local executor gives the job
    placement = prepare_job(cfg)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7" and list(placement["devices"]) == [1]  # GPU 5


@pytest.mark.parametrize("gpus_per_node", [8, 2, None])
def test_a_sweep_given_gpus_4_to_7_never_runs_jobs_on_other_gpus(sweep_job, gpus_per_node):
    override = f"hydra.launcher.gpus_per_node={gpus_per_node if gpus_per_node else 'null'}"
    cfg = sweep_job(["experiment=quickstart", "trainer=gpu", "hydra.sweeper.max_batch_size=4", override], 0, physical=8,
                    sweep_gpus="4,5,6,7")
    with pytest.raises(LaunchError, match=r"the sweep was given 4,5,6,7 \(CUDA_VISIBLE_DEVICES=4,5,6,7 where the sweep "
                                          r"started\); set hydra.launcher.gpus_per_node=4 ") as err:
        prepare_job(cfg)
    assert "\n" not in str(err.value)


def test_without_an_allotment_the_sweep_may_use_every_gpu_of_the_machine(sweep_job):
    cfg = sweep_job(["experiment=quickstart", "trainer=gpu", "hydra.sweeper.max_batch_size=4",
                     "hydra.launcher.gpus_per_node=1"], job_num=0, physical=8)
    with pytest.raises(LaunchError, match=r"shows every job GPU\(s\) 0 but the sweep was given 0,1,2,3,4,5,6,7 \(every "
                                          r"GPU of the machine\); set hydra.launcher.gpus_per_node=8 "):
        prepare_job(cfg)


# ---------------------------------------------------------------- distributed variables left in the shell

SHELL = dict(MASTER_ADDR="elsewhere", MASTER_PORT="29999", RANK="3", WORLD_SIZE="8", LOCAL_RANK="3",
             LOCAL_WORLD_SIZE="8", NODE_RANK="1")


def test_submitits_ranks_win_over_the_shells(sweep_job, monkeypatch):
    ports = set()
    for rank in (0, 1):
        cfg = sweep_job(["experiment=quickstart", "trainer=ddp_cpu"], job_num=0, physical=0, tasks=2,
                        rank=rank)
        for key, value in SHELL.items():
            monkeypatch.setenv(key, value)
        prepare_job(cfg)
        assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_WORLD_SIZE"]) \
            == (str(rank), str(rank), "2", "2")
        assert os.environ["MASTER_ADDR"] != "elsewhere" and "NODE_RANK" not in os.environ
        assert rank_zero_only.rank == rank
        ports.add(os.environ["MASTER_PORT"])
    assert len(ports) == 1 and ports != {"29999"}  # the job's own port, which both of its tasks meet at


def test_a_stale_local_rank_does_not_pass_for_ranks_started_by_hand(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(LaunchError, match=r"LOCAL_RANK=0 is set but MASTER_PORT is not: .*unset LOCAL_RANK") as err:
        check_job(AUTO2, Job(True, "basic", 0), 0)
    assert "\n" not in str(err.value)
    monkeypatch.setenv("MASTER_PORT", "41000")  # Lightning's own rank 1, torchrun or ranks started by hand
    monkeypatch.setenv("LOCAL_RANK", "1")
    check_job(AUTO2, Job(True, "basic", 0), 0)


def test_a_stale_rank_in_the_shell_of_a_plain_run_is_one_line(monkeypatch):
    one = {"accelerator": "cpu", "devices": 1, "strategy": "auto"}
    monkeypatch.setenv("RANK", "1")  # rank_zero_only would read it: no logs, no metrics.csv, no run summary
    with pytest.raises(LaunchError, match=r"RANK=1 is set but no launcher started this process .*; unset RANK$"):
        check_job(one, Job(False, "basic", 0), 0)
    monkeypatch.setenv("RANK", "0")
    check_job(one, Job(False, "basic", 0), 0)


# ---------------------------------------------------------------- end to end on CPU

@pytest.mark.slow
def test_a_sweep_of_strategy_auto_on_two_cpu_processes_is_refused_under_the_basic_launcher(synthetic_root, tmp_path):
    result = run_train("-m", *TINY, f"data.root={synthetic_root}", "trainer=cpu",
                       "trainer.devices=2", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"runs_dir={tmp_path / 'runs'}",
                       timeout=300)
    assert result.returncode == 2, explain(result)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "hydra/launcher=submitit_local hydra.launcher.tasks_per_node=2" in errors[0], explain(result)
    assert (result.stdout + result.stderr).count("Launching 1 jobs locally") <= 1, explain(result)  # not once a rank
    assert not any((tmp_path / "sweep").glob("*/checkpoints/*.ckpt"))


@pytest.mark.slow
def test_strategy_auto_on_two_tasks_from_a_shell_with_leftovers_and_an_allotment(synthetic_root, tmp_path):
    """submitit_local with tasks_per_node=2 for trainer=cpu trainer.devices=2 (strategy auto), started
    from a shell that holds distributed variables and CUDA_VISIBLE_DEVICES=4,5,6,7: the job trains
    as one 2-process run, and its GPUs are counted within 4-7."""
    sweep = tmp_path / "sweep"
    result = run_train("-m", *TINY, f"data.root={synthetic_root}", "trainer=cpu", "trainer.devices=2",
                       "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                       "hydra.launcher.gpus_per_node=2", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}",
                       f"runs_dir={tmp_path / 'runs'}", env={**SHELL, "CUDA_VISIBLE_DEVICES": "4,5,6,7"}, timeout=500)
    assert result.returncode == 0, explain(result)
    assert sorted(p.name for p in (sweep / "0" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(pd.read_csv(sweep / "0" / "metrics.csv").dropna(subset=["val/mIoU"])) == 1  # one run, not two
    logs = "\n".join(p.read_text() for p in [*(sweep / ".submitit").rglob("*_log.*"), sweep / "0" / "train.log"])
    assert "MEMBER: 2/2" in logs, logs[-3000:]  # rank 1 of the job's DDP
    assert re.search(r"GPUs 4,5 for this job: submitit_local showed 0,1", logs), logs[-3000:]
