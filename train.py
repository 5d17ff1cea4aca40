"""Train a segmentation model from the Hydra configs in configs/.

    python train.py experiment=quickstart
    python train.py experiment=competition/fcn8s_vgg16 optimizer.lr=1e-3 trainer.max_epochs=30
    python train.py -m experiment=quickstart optimizer.lr=1e-3,3e-4      # one run folder each
    python train.py experiment=quickstart resume=auto                    # continue the newest matching run
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def one_console_per_line() -> None:
    """Lightning prints its INFO lines with a console handler of its own and also passes them on to
    the root logger, where Hydra's console and train.log handlers print them again: keep Hydra's."""
    lightning = logging.getLogger("lightning")
    if not logging.getLogger().handlers:  # Hydra's job logging is off: Lightning's handler is the only one
        return
    for handler in list(lightning.handlers):
        if type(handler) is logging.StreamHandler:
            lightning.removeHandler(handler)


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    # imported here, after Hydra set up logging: lightning imported earlier keeps a console of its own
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from trashseg.errors import USER_ERRORS, one_line, report
    from trashseg.models.pretrained import OfflineError
    from trashseg.training.launching.job_failure import clear_failure, record_failure, remove_failed_start
    from trashseg.training.launching.jobs import LaunchError, prepare_job
    from trashseg.training.module import NonFiniteLossError
    from trashseg.training.run import train

    one_console_per_line()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    clear_failure(run_dir)  # this job run again into the folder of one that failed
    try:
        placement = prepare_job(cfg)  # the launcher's processes and GPUs for this job, or one line why it cannot run
        metrics = train(cfg, run_dir, placement)
    except (*USER_ERRORS, NonFiniteLossError, OfflineError, LaunchError, MisconfigurationException) as err:
        # ConfigError is a ValueError; MisconfigurationException is Lightning's refusal of a trainer option
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # A sweep goes on to its other jobs (an exit inside a submitit job would leave the sweep waiting
            # for its result); the sweep's table and last lines name this one, and the sweep exits 2.
            reason = one_line(err)
            record_failure(run_dir, reason)
            log.error("error: %s", reason)
            return None  # no score: Optuna records a failed trial
        report(err)
        remove_failed_start(run_dir)
        sys.exit(2)
    except BaseException:
        remove_failed_start(run_dir)  # a traceback, but no empty run folder left behind
        raise
    return metrics.get("best/val/mIoU", float("nan"))  # what Hydra's sweepers (Optuna) maximise


if __name__ == "__main__":
    from trashseg.training.config_keys import check_overrides

    if message := check_overrides(sys.argv[1:], Path(__file__).resolve().parent / "configs"):
        sys.exit(f"error: {message}")
    main()
