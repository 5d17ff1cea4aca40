"""A sweep job killed from outside (scancel, an out-of-memory kill, a lost node) dies without
returning and leaves submitit no result. hydra-submitit-launcher's `launch` then raises submitit's
UncompletedJobError at the first such job: the sweep ends in a traceback, before the other jobs'
results and its table. `CollectingLauncher.launch` waits for every job instead and
records a killed one as a failed job (job_failure: how it ended and the command that continues
it), so SweepSummary's table, `error:` line and exit 2 follow as for a job refused on a setup error.

Hydra instantiates launchers only from classes defined in its hydra_plugins package:
hydra_plugins/trashseg_sweeps puts this mixin on the plugin's SlurmLauncher and LocalLauncher
and registers them as `hydra/launcher=submitit_slurm` and `submitit_local` (queue_configs), in
place of the plugin's own configs, every setting of which they keep.

Imported while Hydra scans its plugins, at every start of train.py: what the launch needs beyond
Hydra is imported when a sweep launches, as the plugin itself does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


def queue_configs(target_module: str) -> dict[str, Any]:
    """The plugin's `submitit_slurm` and `submitit_local` configs with `_target_` naming this
    module's launchers in `target_module`: the same settings, types and defaults."""
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

    return {"submitit_slurm": SlurmQueueConf(_target_=f"{target_module}.SlurmLauncher"),
            "submitit_local": LocalQueueConf(_target_=f"{target_module}.LocalLauncher")}


class CollectingLauncher:
    """Mixin for hydra-submitit-launcher's BaseSubmititLauncher subclasses: `launch` submits as the
    plugin's does (its code, from hydra-submitit-launcher 1.2.0: the plugin has no hook between
    submitting and collecting), then collects each job's result on its own."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        assert self.config is not None
        assert len(job_overrides) > 0
        executor_init = {"folder": self.params["submitit_folder"]}
        executor_init.update({f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k == "max_num_timeout"})
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **executor_init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items()
                                      if k not in {"submitit_folder", "max_num_timeout"}})

        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))

        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        return [self.job_return(job, list(overrides), idx)
                for idx, (job, overrides) in enumerate(zip(jobs, job_overrides), start=initial_job_idx)]

    def job_return(self, job, overrides: list[str], idx: int) -> JobReturn:
        """The job's own JobReturn; for a job that ended without one, its failure on record and a
        JobReturn with no value, as a job refused on a setup error returns (Optuna: a failed trial)."""
        from submitit.core.utils import UncompletedJobError

        from trashseg.run_layout import recorded_overrides

        from .job_failure import killed_reason, record_failure

        try:
            return job.results()[0]
        except UncompletedJobError:
            job_dir = self.job_dir(overrides, idx, job.job_id)
            state = (job.state or "UNKNOWN").split()[0]  # sacct's `CANCELLED by 0`: the state alone
            if self._EXECUTOR == "slurm":
                ended = f"{state} (sacct) without finishing"
            else:  # submitit_local's state is its controller's, which exits normally when its task is killed
                ended = f"without a result (submitit_local: {state})"
            record_failure(job_dir, killed_reason(job.job_id, ended, job_dir, recorded_overrides(job_dir) or overrides))
            return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None,
                             working_dir=str(job_dir), task_name=str(self.config.hydra.job.name))

    def job_dir(self, overrides: list[str], idx: int, job_id: str) -> Path:
        """The folder the job ran in, or would have: its own config's sweep dir and subdir, as the
        job itself composes them (BaseSubmititLauncher.__call__, hydra.core.utils.run_job)."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.num = idx
            config.hydra.job.id = job_id
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)

