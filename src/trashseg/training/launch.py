"""Where a job's processes come from: one Hydra job is one run, whatever launcher started it.

Lightning's DDP starts ranks 1..N-1 by re-running `sys.argv`; under `python train.py -m` that is the
whole sweep again in every rank (Lightning PR #18175). So a sweep whose jobs use DDP runs through
Hydra's submitit launcher, which starts each job's processes itself:

- `hydra/launcher=submitit_local hydra.launcher.tasks_per_node=N`: N processes per job on this
  machine; their ranks are exported here (submitit's TorchDistributedEnvironment), so Lightning
  sees processes created for it and starts none.
- `hydra/launcher=submitit_slurm`: SLURM's tasks, which Lightning's SLURMEnvironment reads.

Under the basic launcher such a sweep stops in one line naming the launcher to use. Jobs that run
side by side on one machine's GPUs each take their own GPUs (`gpu_slot`), since submitit's local
executor makes the same GPUs visible to every job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


class LaunchError(ValueError):
    """A sweep's jobs cannot run as configured under the launcher chosen."""


def spawns_processes(strategy) -> bool:
    """Strategies whose Lightning launcher re-runs the script (not mp.spawn, not one process)."""
    name = str(strategy)
    return name.startswith("ddp") and not any(s in name for s in ("spawn", "fork", "notebook"))


def processes_per_node(trainer: dict, gpus_visible: int) -> int:
    """What `trainer.devices` asks for on one node, as Lightning counts it: a list or "0,1" by its
    length, -1 or "auto" as every visible GPU (one process on a CPU)."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        return max(len(devices), 1)
    if isinstance(devices, str):
        devices = devices.strip()
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        devices = -1 if devices in ("auto", "-1") else int(devices)
    if devices == -1:
        on_gpu = trainer.get("accelerator") in ("gpu", "cuda", "auto") and gpus_visible
        return gpus_visible if on_gpu else 1
    return max(int(devices), 1)


@dataclass(frozen=True)
class Job:
    """What the launcher gave this process: the sweep's mode and launcher, and submitit's tasks."""

    multirun: bool
    launcher: str
    job_num: int
    tasks: int = 1  # processes submitit started for this job (all nodes)
    rank: int = 0
    cluster: str | None = None  # "local" or "slurm" under submitit


def current_job() -> Job:
    hc = HydraConfig.get()
    launcher = hc.runtime.choices.get("hydra/launcher") or "basic"
    job = Job(multirun=hc.mode == RunMode.MULTIRUN, launcher=launcher, job_num=int(hc.job.get("num") or 0))
    if launcher.startswith("submitit"):
        import submitit

        env = submitit.JobEnvironment()
        job = Job(job.multirun, launcher, job.job_num, tasks=env.num_tasks, rank=env.global_rank, cluster=env.cluster)
    return job


def external_processes() -> bool:
    """Ranks started by someone else: torchrun, SLURM's srun, or a hand-launched node."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def check_job(trainer: dict, job: Job, gpus_visible: int) -> None:
    """Stop a job that would run the wrong number of processes, before anything is written."""
    processes = processes_per_node(trainer, gpus_visible) * int(trainer.get("num_nodes") or 1)
    ddp = spawns_processes(trainer.get("strategy", "auto")) and processes > 1
    if job.launcher.startswith("submitit"):
        wanted = processes if spawns_processes(trainer.get("strategy", "auto")) else 1
        if job.tasks != wanted:
            nodes = int(trainer.get("num_nodes") or 1)
            raise LaunchError(
                f"the {job.launcher} job has {job.tasks} task(s) but the trainer runs {wanted} process(es) "
                f"(trainer.strategy={trainer.get('strategy')}, devices={trainer.get('devices')}, num_nodes={nodes}); "
                f"set hydra.launcher.tasks_per_node={wanted // nodes} hydra.launcher.nodes={nodes}")
        return
    if job.multirun and ddp and not external_processes():
        raise LaunchError(
            f"a sweep (-m) whose jobs use {trainer.get('strategy')} on {processes} processes would re-run the whole sweep "
            "in every rank under Hydra's basic launcher; add hydra/launcher=submitit_local "
            f"hydra.launcher.tasks_per_node={processes} (one machine) or hydra/launcher=submitit_slurm (a cluster), "
            "or drop -m (docs/training.md, Several GPUs and clusters)")


def gpu_slot(job_num: int, gpus_per_job: int, gpus_visible: int) -> list[int]:
    """The GPUs job `job_num` of a sweep uses when jobs run side by side on one machine: slot
    job_num mod (visible // per job). The sweep runs as many jobs at once as there are slots
    (hydra.sweeper.max_batch_size), so no two running jobs share a GPU."""
    slots = gpus_visible // gpus_per_job
    if slots < 1:
        raise LaunchError(f"a job needs {gpus_per_job} GPU(s) but {gpus_visible} are visible; "
                          "set hydra.launcher.gpus_per_node to the machine's GPU count")
    first = (job_num % slots) * gpus_per_job
    return list(range(first, first + gpus_per_job))


def place_job(trainer: dict, job: Job, gpus_visible: int, gpus_physical: int, max_batch_size: int | None) -> dict:
    """The trainer keys this job runs with: its ranks exported for Lightning, and its own GPUs
    when a local sweep's jobs share the machine. Returns the trainer config to use."""
    if job.cluster == "local" and job.tasks > 1:
        import submitit

        # LOCAL_RANK, RANK, WORLD_SIZE, MASTER_ADDR/PORT: Lightning's LightningEnvironment then
        # starts no processes of its own. The GPU per rank stays Lightning's choice (devices below).
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        rank_zero_only.rank = job.rank  # it read RANK at import, before the export: the run folder's claim asks it
    if job.cluster != "local" or not job.multirun or trainer.get("accelerator") == "cpu":
        return trainer
    if gpus_physical > gpus_visible:
        raise LaunchError(
            f"submitit_local shows {gpus_visible} of this machine's {gpus_physical} GPUs to every job; set "
            f"hydra.launcher.gpus_per_node={gpus_physical} and trashseg gives each job its own "
            "(trainer.devices GPUs per job)")
    if not gpus_visible:
        return trainer
    per_job = processes_per_node(trainer, gpus_visible)
    slots = gpus_visible // max(per_job, 1)
    if per_job >= gpus_visible:
        return trainer
    if max_batch_size is None or max_batch_size > slots:
        raise LaunchError(
            f"{gpus_visible} GPUs hold {slots} jobs of {per_job} GPU(s) at once, but the sweep may start more; "
            f"add hydra.sweeper.max_batch_size={slots}")
    return {**trainer, "devices": gpu_slot(job.job_num, per_job, gpus_visible)}


def gpu_counts() -> tuple[int, int]:
    """(GPUs this process sees, GPUs the machine has): NVML counts past CUDA_VISIBLE_DEVICES."""
    import torch

    visible = torch.cuda.device_count()
    try:
        physical = max(torch.cuda._raw_device_count_nvml(), visible)
    except Exception:  # no NVML (a CPU machine, or an old driver): trust the visible count
        physical = visible
    return visible, physical


def prepare_job(cfg) -> None:
    """Check this Hydra job against its launcher and give it its processes and GPUs (cfg.trainer in place)."""
    from omegaconf import OmegaConf, open_dict

    job = current_job()
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    visible, physical = gpu_counts()
    check_job(trainer, job, visible)
    placed = place_job(trainer, job, visible, physical, HydraConfig.get().sweeper.get("max_batch_size"))
    if placed != trainer:
        with open_dict(cfg):
            cfg.trainer.devices = placed["devices"]
