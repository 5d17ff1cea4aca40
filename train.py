"""Train a segmentation model from the Hydra configs in configs/.

    python train.py experiment=quickstart
    python train.py experiment=fcn8s_vgg16 optimizer.lr=1e-3 trainer.max_epochs=30
    python train.py -m experiment=quickstart optimizer.lr=1e-3,3e-4      # one run folder each
    python train.py experiment=quickstart resume=auto                    # continue the newest run
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


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from trashseg.cli import USER_ERRORS, report
    from trashseg.models.pretrained import OfflineError
    from trashseg.training.module import NonFiniteLossError
    from trashseg.training.run import train

    one_console_per_line()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = train(cfg, run_dir)
    except (*USER_ERRORS, NonFiniteLossError, OfflineError) as err:  # ConfigError is a ValueError
        report(err)
        if run_dir.is_dir() and all(p.name in HYDRA_FILES for p in run_dir.iterdir()):
            shutil.rmtree(run_dir)  # only Hydra's log of this failed start: no run to keep
        sys.exit(2)
    return metrics.get("val/mIoU", float("nan"))  # for Hydra sweepers


if __name__ == "__main__":
    from trashseg.training.overrides import check_overrides

    if message := check_overrides(sys.argv[1:], Path(__file__).resolve().parent / "configs"):
        sys.exit(f"error: {message}")
    main()
