"""Train a segmentation model from the Hydra configs in configs/.

    python train.py experiment=quickstart
    python train.py experiment=fcn8s_vgg16 optimizer.lr=1e-3 trainer.max_epochs=30
    python train.py -m experiment=quickstart optimizer.lr=1e-3,3e-4      # one run folder each
    python train.py experiment=quickstart resume=auto                    # continue the newest run
"""

import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

HYDRA_FILES = {".hydra", "train.log"}


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from trashseg.cli import USER_ERRORS
    from trashseg.models.pretrained import OfflineError
    from trashseg.training.module import NonFiniteLossError
    from trashseg.training.run import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = train(cfg, run_dir)
    except (*USER_ERRORS, NonFiniteLossError, OfflineError) as err:  # ConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        if run_dir.is_dir() and all(p.name in HYDRA_FILES for p in run_dir.iterdir()):
            shutil.rmtree(run_dir)  # only Hydra's log of this failed start: no run to keep
        sys.exit(2)
    return metrics.get("val/mIoU", float("nan"))  # for Hydra sweepers


if __name__ == "__main__":
    from trashseg.training.overrides import check_overrides

    if message := check_overrides(sys.argv[1:], Path(__file__).resolve().parent / "configs"):
        sys.exit(f"error: {message}")
    main()
