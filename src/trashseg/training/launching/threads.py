"""Size torch's intra-op threads and the loader workers to the cores this process may use.

torch starts one OpenMP thread per core it may run on and the loader `data.num_workers` processes,
whatever else runs there: two runs side by side on 2 cores held 4 spinning compute threads and 4
workers, and each ran 5x slower than alone, not 2x (docs/results/cpu_path.md). `threads: auto`
shares the cores in this process's CPU affinity (`taskset -c 0 python train.py ...` gives it one)
among the training processes of the node, lowers torch's threads to that share and caps the loader
workers at it. Processes that Lightning's DDP launcher, torchrun or submitit_local start share one
affinity, so it is divided among them; a task that SLURM's srun started is already bound to its own
CPUs (`--cpus-per-task`), so its affinity is its share as it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from lightning.pytorch.utilities import rank_zero_info

from .jobs import devices_per_node


@dataclass(frozen=True)
class ThreadPlan:
    cores: int        # cores this process may use: its affinity over the training processes of the node
    threads: int      # torch's intra-op threads
    workers: int      # loader worker processes (data.num_workers, capped at the cores)
    reason: str

    def line(self) -> str:
        return (f"threads: {self.threads} torch thread(s), {self.workers} loader worker(s) "
                f"({self.cores} core(s) for this process: {self.reason})")


def processes_per_node(trainer: Mapping) -> int:
    """Training processes this node runs: torchrun's or submitit's LOCAL_WORLD_SIZE, else what
    trainer.devices asks for."""
    if os.environ.get("LOCAL_WORLD_SIZE", "").isdigit():
        return max(int(os.environ["LOCAL_WORLD_SIZE"]), 1)
    return devices_per_node(dict(trainer), torch.cuda.device_count())


def started_by_srun() -> bool:
    """This process is a task of a SLURM job step (srun), and Lightning starts no processes beside
    it: as Lightning decides, not in an interactive job (job name bash or interactive), whose
    processes Lightning starts itself within the one task's CPUs. The batch script itself is no step."""
    env = os.environ
    return "SLURM_STEP_ID" in env and "SLURM_PROCID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def core_share(trainer: Mapping) -> tuple[int, str]:
    """(cores this process may use, where that number came from)."""
    affinity = len(os.sched_getaffinity(0))
    if started_by_srun():
        per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
        if per_task.isdigit():  # min: a cluster that does not bind tasks leaves each the whole allocation
            return max(min(affinity, int(per_task)), 1), (f"SLURM task, --cpus-per-task={per_task}, "
                                                         f"{affinity} in its CPU affinity")
        return affinity, f"SLURM task, {affinity} in its CPU affinity"
    per_node = processes_per_node(trainer)
    return max(affinity // per_node, 1), f"{affinity} in its CPU affinity / {per_node} process(es) per node"


def plan_threads(setting: int | str | None, num_workers: int, trainer: Mapping) -> ThreadPlan:
    """`setting`: auto (or null) or a thread count. auto only ever lowers torch's current count: a
    lower one set before (OMP_NUM_THREADS, torch.set_num_threads in a notebook or test) stays."""
    cores, reason = core_share(trainer)
    if setting in (None, "auto"):
        threads = min(torch.get_num_threads(), cores)
    elif isinstance(setting, int) and not isinstance(setting, bool) and setting > 0:
        threads = setting
    else:
        raise ValueError(f"threads={setting!r} is not a thread count; give auto or a whole number >= 1")
    return ThreadPlan(cores, max(threads, 1), min(int(num_workers), cores), reason)


def size_threads(cfg: dict) -> ThreadPlan:
    """Apply `cfg["threads"]` to this process: torch's intra-op threads, and `data.num_workers`
    capped at this process's cores (in `cfg`, so the run's config.yaml records what ran)."""
    plan = plan_threads(cfg.get("threads", "auto"), cfg["data"]["num_workers"], cfg["trainer"])
    torch.set_num_threads(plan.threads)
    if processes_per_node(cfg["trainer"]) > 1:  # Lightning's DDP launcher keeps an OMP_NUM_THREADS it finds
        os.environ["OMP_NUM_THREADS"] = str(plan.threads)
    cfg["data"]["num_workers"] = plan.workers
    rank_zero_info(plan.line())
    return plan
