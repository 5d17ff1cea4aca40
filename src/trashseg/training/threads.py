"""Size torch's intra-op threads and the loader workers to the cores this process may use.

torch starts one OpenMP thread per core it may run on and the loader `data.num_workers` processes,
whatever else runs there: two runs side by side on 2 cores held 4 spinning compute threads and 4
workers, and each ran 5x slower than alone, not 2x (docs/results/cpu_path.md). `threads: auto`
shares the cores in this process's CPU affinity (`taskset -c 0 python train.py ...` gives it one)
among the training processes of the node, as Lightning's DDP launchers do, lowers torch's threads
to that share and caps the loader workers at it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from lightning.pytorch.utilities import rank_zero_info

from .launch import processes_per_node as requested_processes


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
    return requested_processes(dict(trainer), torch.cuda.device_count())


def plan_threads(setting: int | str | None, num_workers: int, trainer: Mapping) -> ThreadPlan:
    """`setting`: auto (or null) or a thread count. auto only ever lowers torch's current count: a
    lower one set before (OMP_NUM_THREADS, torch.set_num_threads in a notebook or test) stays."""
    affinity = len(os.sched_getaffinity(0))
    per_node = processes_per_node(trainer)
    cores = max(affinity // per_node, 1)
    reason = f"{affinity} in its CPU affinity / {per_node} process(es) per node"
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
