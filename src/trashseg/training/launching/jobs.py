"""Where a job's processes come from: one Hydra job is one run, whatever launcher started it.

Lightning's DDP starts ranks 1..N-1 by re-running `sys.argv`; under `python train.py -m` that is the
whole sweep again in every rank (Lightning PR #18175). That holds for every strategy whose launcher
re-runs the script, `strategy: auto` on several devices included (Lightning turns it into ddp), so
the strategy is judged as Lightning resolves it, not by its name in the config. A sweep whose jobs
run that way goes through Hydra's submitit launcher, which starts each job's processes itself:

- `hydra/launcher=submitit_local hydra.launcher.tasks_per_node=N`: N processes per job on this
  machine; their ranks are exported here (submitit's TorchDistributedEnvironment), so Lightning
  sees processes created for it and starts none.
- `hydra/launcher=submitit_slurm`: SLURM's tasks, which Lightning's SLURMEnvironment reads.

Under the basic launcher such a sweep stops in one line naming the launcher to use. Jobs that run
side by side on one machine's GPUs each take their own GPUs (`gpu_slot`), since submitit's local
executor makes the same GPUs visible to every job: the machine's 0..gpus_per_node-1, whatever
CUDA_VISIBLE_DEVICES the sweep was started with (its visible_gpus is not among the parameters Hydra's
launcher may pass). `SweepGpus` hands the sweep's allotment on to the jobs, which count their GPUs
within it and refuse to run on fewer or other GPUs than the sweep was given.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

# The variables torch.distributed and Lightning read a process's rank and rendezvous from.
DISTRIBUTED_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                         "NODE_RANK", "GROUP_RANK")
log = logging.getLogger(__name__)
# CUDA_VISIBLE_DEVICES of the process that launched the sweep, as SweepGpus hands it to the jobs.
SWEEP_GPUS = "TRASHSEG_SWEEP_CUDA_VISIBLE_DEVICES"


class LaunchError(ValueError):
    """A sweep's jobs cannot run as configured under the launcher chosen."""


def devices_per_node(trainer: dict, gpus_visible: int) -> int:
    """What `trainer.devices` asks for on one node, as Lightning counts it: a list or "0,1" by its
    length, -1 or "auto" as every visible GPU (one device on a CPU). Lightning runs one process per
    device whenever there are several."""
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


def resolved_strategy(trainer: dict, devices: int) -> str:
    """The strategy Lightning trains `trainer` with: the one named, or for `auto` the rule of Lightning
    2.6's `_AcceleratorConnector._choose_strategy` (CPU and GPU accelerators): ddp on several nodes
    or several devices (ddp_fork in an interactive session), one device otherwise.
    tests/test_launch_checks.py holds it against the connector itself."""
    from lightning.fabric.utilities.imports import _IS_INTERACTIVE

    strategy = str(trainer.get("strategy") or "auto").lower()
    if strategy != "auto":
        return strategy
    if int(trainer.get("num_nodes") or 1) > 1:
        return "ddp"
    if devices <= 1:
        return "single_device"
    return "ddp_fork" if _IS_INTERACTIVE else "ddp"


@lru_cache(maxsize=None)
def reruns_script(strategy: str) -> bool:
    """Whether Lightning starts this strategy's other ranks by running the script again (its
    `_SubprocessScriptLauncher`: ddp, fsdp, deepspeed...) rather than by spawn / fork or not at all.
    Asked of Lightning: the strategy as its registry builds it, given a launcher."""
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    class LightningStartsTheRanks(LightningEnvironment):  # as if LOCAL_RANK were unset: nobody else started them
        creates_processes_externally = False

    if strategy not in StrategyRegistry:
        raise LaunchError(f"trainer.strategy={strategy} is not one of Lightning's strategies; "
                          f"use auto or one of {', '.join(sorted(StrategyRegistry))}")
    entry = StrategyRegistry[strategy]
    if issubclass(entry["strategy"], SingleDeviceStrategy):
        return False
    built = entry["strategy"](**entry["init_params"])
    built.cluster_environment = LightningStartsTheRanks()
    built._configure_launcher()
    return isinstance(built.launcher, _SubprocessScriptLauncher)


@dataclass(frozen=True)
class Processes:
    """How Lightning runs a trainer config: its strategy, and the processes it wants."""

    strategy: str        # as Lightning resolves it (auto -> ddp, single_device, ...)
    per_node: int        # devices per node: one process each when there are several
    nodes: int
    reruns_script: bool  # ranks 1..N-1 are this script run again, unless someone else started them

    @property
    def script_ranks(self) -> int:
        """The processes that run this script: the job's tasks under submitit."""
        return self.per_node * self.nodes if self.reruns_script else 1

    def describe(self, trainer: dict) -> str:
        shown = trainer.get("strategy") or "auto"
        resolved = "" if shown == self.strategy else f" ({self.strategy} in Lightning)"
        return f"trainer.strategy={shown}{resolved}, devices={trainer.get('devices')}, num_nodes={self.nodes}"


def trainer_processes(trainer: dict, gpus_visible: int) -> Processes:
    per_node = devices_per_node(trainer, gpus_visible)
    strategy = resolved_strategy(trainer, per_node)
    return Processes(strategy, per_node, int(trainer.get("num_nodes") or 1), reruns_script(strategy))


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
    tasks = {}
    if launcher.startswith("submitit"):
        import submitit

        env = submitit.JobEnvironment()
        tasks = {"tasks": env.num_tasks, "rank": env.global_rank, "cluster": env.cluster}
    return Job(multirun=hc.mode == RunMode.MULTIRUN, launcher=launcher, job_num=int(hc.job.get("num") or 0), **tasks)


def external_processes() -> bool:
    """Ranks started by someone else: torchrun, SLURM's srun, or a hand-launched node."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def leftover_rank(processes: Processes) -> str | None:
    """One line when RANK / LOCAL_RANK in the environment are a shell's leftovers that would break
    this run. Every launcher that sets them (torchrun, Lightning's own ranks, ranks started by hand)
    sets MASTER_PORT beside them, since its ranks meet there; without it they are nobody's. Under
    srun, Lightning takes the ranks from SLURM and reads neither."""
    if "MASTER_PORT" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return None
    if "LOCAL_RANK" in os.environ and processes.reruns_script and processes.script_ranks > 1:
        return (f"LOCAL_RANK={os.environ['LOCAL_RANK']} is set but MASTER_PORT is not: Lightning takes this process "
                f"for one of {processes.script_ranks} ranks started by hand, and they cannot meet without a shared "
                "port; unset LOCAL_RANK (left in the shell) or start every rank with torchrun")
    name = next((k for k in ("RANK", "LOCAL_RANK") if k in os.environ), None)  # rank_zero_only's order
    if name and os.environ[name].strip() not in ("", "0"):
        return (f"{name}={os.environ[name]} is set but no launcher started this process (no MASTER_PORT): "
                f"Lightning would take it for rank {os.environ[name]} and write no logs or metrics; unset {name}")
    return None


def check_job(trainer: dict, job: Job, gpus_visible: int) -> None:
    """Stop a job that would run the wrong number of processes, before anything is written."""
    processes = trainer_processes(trainer, gpus_visible)
    if job.launcher.startswith("submitit"):
        if job.tasks != processes.script_ranks:
            raise LaunchError(
                f"the {job.launcher} job has {job.tasks} task(s) but the trainer runs {processes.script_ranks} "
                f"process(es) ({processes.describe(trainer)}); set hydra.launcher.tasks_per_node="
                f"{processes.script_ranks // processes.nodes} hydra.launcher.nodes={processes.nodes}")
        return
    if problem := leftover_rank(processes):
        raise LaunchError(problem)
    if job.multirun and processes.reruns_script and processes.per_node > 1 and not external_processes():
        raise LaunchError(
            f"a sweep (-m) whose jobs run {processes.per_node} processes a node ({processes.describe(trainer)}) "
            "would re-run the whole sweep in every rank under Hydra's basic launcher; "
            f"add hydra/launcher=submitit_local hydra.launcher.tasks_per_node={processes.per_node} (one machine) "
            "or hydra/launcher=submitit_slurm "
            "(a cluster), or drop -m (docs/training.md, Several GPUs and clusters)")


def gpu_slot(job_num: int, gpus_per_job: int, gpus_visible: int) -> list[int]:
    """The GPUs job `job_num` of a sweep uses when jobs run side by side on one machine: slot
    job_num mod (visible // per job). The sweep runs at most as many jobs at once as there are
    slots (`sweep_width`), and a batch's job numbers follow each other, so no two running jobs
    share a GPU."""
    slots = gpus_visible // gpus_per_job
    if slots < 1:
        raise LaunchError(f"a job needs {gpus_per_job} GPU(s) but {gpus_visible} are visible; "
                          "set hydra.launcher.gpus_per_node to the number of GPUs the sweep may use")
    first = (job_num % slots) * gpus_per_job
    return list(range(first, first + gpus_per_job))


def sweep_width(sweeper: dict) -> tuple[int | None, str]:
    """How many jobs the sweeper hands the launcher at once, and the key that sets it: the basic
    sweeper's max_batch_size (None: every job at once), the Optuna sweeper's n_jobs."""
    if "n_jobs" in sweeper:
        return sweeper["n_jobs"], "hydra.sweeper.n_jobs"
    if "max_batch_size" in sweeper:
        return sweeper["max_batch_size"], "hydra.sweeper.max_batch_size"
    raise LaunchError(f"the sweeper {sweeper.get('_target_')} does not say how many jobs it starts at once, so they "
                      "cannot be given their own GPUs; use the basic sweeper (hydra.sweeper.max_batch_size) or Optuna "
                      "(hydra.sweeper.n_jobs)")


def drop_shell_ranks() -> None:
    """Forget the distributed variables this job inherited from the shell that started the sweep:
    the launcher owns the ranks. submitit's export refuses to overwrite them, and its MASTER_PORT
    would be the shell's (jobs side by side would share one), not the port it derives from the job."""
    for name in DISTRIBUTED_VARIABLES:
        os.environ.pop(name, None)


def adopt_submitit_ranks(job: Job) -> None:
    """A submitit job's ranks are submitit's, whatever the shell that started the sweep held: its
    distributed variables go, a local job of several tasks exports submitit's own (Lightning's
    LightningEnvironment then starts no processes; SLURM jobs' ranks Lightning reads from SLURM),
    and rank_zero_only, which read RANK at import, learns this task's rank."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    drop_shell_ranks()
    if job.cluster == "local" and job.tasks > 1:
        import submitit

        # the GPU per rank stays Lightning's choice (trainer.devices, placed below)
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    rank_zero_only.rank = job.rank  # the run folder's claim asks it before the Trainer sets it


def place_job(trainer: dict, job: Job, job_gpus: list[str], allotment: list[str], sweeper: dict) -> dict:
    """The trainer keys this job runs with: its own GPUs when a local sweep's jobs share the machine.
    `job_gpus`: the GPUs submitit showed this job (its CUDA_VISIBLE_DEVICES, after `within_allotment`);
    `allotment`: the GPUs the sweep was given (`sweep_allotment`). Returns the trainer keys it sets
    (`{"devices": [...]}`), none when the job runs as its config says."""
    if job.cluster != "local" or not job.multirun or trainer.get("accelerator") == "cpu":
        return {}
    if sorted(job_gpus) != sorted(allotment):
        raise LaunchError(
            f"submitit_local shows every job GPU(s) {','.join(job_gpus) or 'none'} but the sweep was given "
            f"{','.join(allotment) or 'none'} ({allotment_source()}); "
            f"set hydra.launcher.gpus_per_node={len(allotment)} and trashseg gives each job its own "
            "(trainer.devices GPUs a job)")
    if not job_gpus:
        return {}
    per_job = devices_per_node(trainer, len(job_gpus))
    placed = gpu_slot(job.job_num, per_job, len(job_gpus))
    slots = len(job_gpus) // per_job
    width, key = sweep_width(sweeper)
    if width is None or width > slots:
        raise LaunchError(
            f"{len(job_gpus)} GPUs hold {slots} job(s) of {per_job} GPU(s) at once, but the sweep may start "
            f"{'every job' if width is None else width} at once; set {key}={slots}")
    return {"devices": placed} if per_job < len(job_gpus) else {}  # all of them: as asked


class SweepGpus(Callback):
    """Hands the GPUs a sweep was given (its CUDA_VISIBLE_DEVICES) on to the jobs, in the variable
    SWEEP_GPUS: submitit's local executor replaces CUDA_VISIBLE_DEVICES in every job. A Hydra
    callback (configs/train.yaml), so it runs in the process that launches the sweep."""

    def on_multirun_start(self, config, **kwargs) -> None:
        if "CUDA_VISIBLE_DEVICES" in os.environ:
            os.environ[SWEEP_GPUS] = os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ.pop(SWEEP_GPUS, None)  # a sweep started from inside another one: the machine's GPUs


def cuda_list(value: str) -> list[str]:
    return [g.strip() for g in value.split(",") if g.strip()]


def sweep_allotment(physical: int) -> list[str]:
    """The GPUs the sweep was given: its CUDA_VISIBLE_DEVICES (SweepGpus), else the machine's."""
    if SWEEP_GPUS in os.environ:
        return cuda_list(os.environ[SWEEP_GPUS])
    return [str(k) for k in range(physical)]


def allotment_source() -> str:
    if SWEEP_GPUS in os.environ:
        return f"CUDA_VISIBLE_DEVICES={os.environ[SWEEP_GPUS]} where the sweep started"
    return "every GPU of the machine"


def within_allotment(shown: list[str], allotment: list[str]) -> list[str]:
    """The GPUs a submitit_local job means: submitit shows it 0..gpus_per_node-1 of the machine,
    whatever CUDA_VISIBLE_DEVICES the sweep had, where CUDA numbers devices within what a process
    is given. Read as that: the first gpus_per_node GPUs of the sweep's allotment."""
    if shown == [str(k) for k in range(len(shown))] and len(shown) <= len(allotment):
        return allotment[:len(shown)]
    return shown


def show_job_its_gpus() -> None:
    """Point this submitit_local job's CUDA_VISIBLE_DEVICES into the sweep's allotment, before CUDA
    reads it (4 GPUs of a sweep started with CUDA_VISIBLE_DEVICES=4,5,6,7 are 4-7, not 0-3)."""
    if SWEEP_GPUS not in os.environ or "CUDA_VISIBLE_DEVICES" not in os.environ:
        return
    shown = cuda_list(os.environ["CUDA_VISIBLE_DEVICES"])
    meant = within_allotment(shown, cuda_list(os.environ[SWEEP_GPUS]))
    if meant == shown:
        return
    import torch

    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA started before the job's GPUs were chosen; call prepare_job first")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(meant)
    log.info(f"GPUs {','.join(meant)} for this job: submitit_local showed {','.join(shown)}, counted within the "
             f"sweep's CUDA_VISIBLE_DEVICES={os.environ[SWEEP_GPUS]}")


def gpu_counts() -> tuple[list[str], int]:
    """(the GPUs this process is shown, as CUDA_VISIBLE_DEVICES names them; the machine's GPU count,
    from NVML past CUDA_VISIBLE_DEVICES)."""
    import torch

    visible = torch.cuda.device_count()
    try:
        physical = max(torch.cuda._raw_device_count_nvml(), visible)
    except Exception:  # no NVML (a CPU machine, or an old driver): trust the visible count
        physical = visible
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return cuda_list(os.environ["CUDA_VISIBLE_DEVICES"]), physical
    return [str(k) for k in range(visible)], physical


def prepare_job(cfg) -> dict:
    """Check this Hydra job against its launcher and give it its processes and GPUs: the trainer keys
    the run config takes from the launcher (`{"devices": ...}`, or none), applied when train()
    resolves it (training.run_config)."""
    from omegaconf import OmegaConf

    job = current_job()
    if job.cluster == "local":
        show_job_its_gpus()
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    job_gpus, physical = gpu_counts()
    check_job(trainer, job, len(job_gpus))
    if job.cluster is not None:
        adopt_submitit_ranks(job)
    sweeper = OmegaConf.to_container(HydraConfig.get().sweeper)
    return place_job(trainer, job, job_gpus, sweep_allotment(physical), sweeper)
