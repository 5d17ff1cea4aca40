"""W&B names for a sweep's runs: one group per sweep, each run named by what the sweep varies.

W&B's compare view lists runs by name; named after their folders (`0`, `1`, ...) a fold sweep reads
as numbers. Here a job of `-m data.fold=0,1,2` is `data.fold=2` in the group of its sweep folder,
an Optuna trial is named by the values it sampled.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import OmegaConf


def swept_keys(sweeper_params: dict | None, sweep_overrides: list[str]) -> list[str]:
    """Keys the sweep varies: the sweeper's `params` (Optuna's search space) and the command line's
    sweep overrides (`data.fold=0,1,2`, `optimizer.lr=range(...)`)."""
    keys = list(sweeper_params or {})
    try:
        parsed = OverridesParser.create().parse_overrides(sweep_overrides)
    except HydraException:
        parsed = []
    keys += [o.get_key_element() for o in parsed if o.is_sweep_override()]
    return list(dict.fromkeys(k.lstrip("+~") for k in keys))


def job_name(keys: list[str], job_overrides: list[str]) -> str | None:
    """`key=value` of this job for each swept key, in the sweep's order."""
    values = {}
    for item in job_overrides:
        key, _, value = item.partition("=")
        values[key.lstrip("+~")] = value
    parts = [f"{k}={values[k]}" for k in keys if k in values]
    return " ".join(parts) or None


def sweep_identity() -> tuple[str | None, str | None]:
    """(group, name) for this process's W&B run; (None, None) outside a Hydra sweep."""
    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None, None
    sweep_dir = Path(str(hc.sweep.dir))
    master = sweep_dir / "multirun.yaml"  # written by the basic sweeper: the command line as typed
    typed = list(OmegaConf.load(master).hydra.overrides.task) if master.is_file() else []
    params = OmegaConf.to_container(hc.sweeper.params) if hc.sweeper.get("params") else None
    name = job_name(swept_keys(params, typed), list(hc.overrides.task))
    return str(sweep_dir), name or str(hc.job.num)
