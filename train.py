"""Train a segmentation model from the Hydra configs in configs/.

    python train.py experiment=quickstart
    python train.py experiment=competition/fcn8s_vgg16 optimizer.lr=1e-3 trainer.max_epochs=30
    python train.py -m experiment=quickstart optimizer.lr=1e-3,3e-4      # one run folder each
    python train.py experiment=quickstart resume=auto                    # continue the newest matching run
"""

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

HYDRA_FILES = {".hydra", "train.log"}


def one_console_per_line() -> None:
    """Lightning prints its INFO lines with a console handler of its own and also passes them on to
    the root logger, where Hydra's console and train.log handlers print them again: keep Hydra's."""
    lightning = logging.getLogger("lightning")
    if not logging.getLogger().handlers:  # Hydra's job logging is off: Lightning's handler is the only one
        return
    for handler in list(lightning.handlers):
        if type(handler) is logging.StreamHandler:
            lightning.removeHandler(handler)


def remove_failed_start(run_dir: Path) -> None:
    """A start that failed before training leaves no run folder: Hydra's files go, and so do the
    parents it made for them (runs/<experiment>/) when nothing else is in them."""
    if not (run_dir.is_dir() and all(p.name in HYDRA_FILES for p in run_dir.iterdir())):
        return
    shutil.rmtree(run_dir)
    here = Path.cwd().resolve()
    for parent in run_dir.resolve().parents:
        if parent == here or here not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # imported here, after Hydra set up logging: lightning imported earlier keeps a console of its own
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from trashseg.cli import USER_ERRORS, report
    from trashseg.models.pretrained import OfflineError
    from trashseg.training.launch import LaunchError, prepare_job
    from trashseg.training.module import NonFiniteLossError
    from trashseg.training.run import train

    one_console_per_line()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if "data=synthetic" in hydra_cfg.overrides.task and cfg.data.get("synthetic"):
        cfg.data.synthetic.root = cfg.data.root  # asked for by name: generated wherever data.root points
    try:
        prepare_job(cfg)  # the launcher's processes and GPUs for this job, or one line why it cannot run
        metrics = train(cfg, run_dir)
    except (*USER_ERRORS, NonFiniteLossError, OfflineError, LaunchError, MisconfigurationException) as err:
        report(err)  # ConfigError is a ValueError; MisconfigurationException is Lightning's refusal of a trainer option
        remove_failed_start(run_dir)
        sys.exit(2)
    except BaseException:
        remove_failed_start(run_dir)  # a traceback, but no empty run folder left behind
        raise
    return metrics.get("best/val/mIoU", float("nan"))  # what Hydra's sweepers (Optuna) maximise


if __name__ == "__main__":
    from trashseg.training.overrides import check_overrides

    if message := check_overrides(sys.argv[1:], Path(__file__).resolve().parent / "configs"):
        sys.exit(f"error: {message}")
    main()
