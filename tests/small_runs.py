"""The small quickstart config the training tests build on: a 3-stage UNet on the synthetic data,
CSV logs, no workers, runs under the test's own folder."""

from pathlib import Path

from hydra import compose, initialize_config_dir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def small_quickstart(data_root: Path, tmp_path: Path, *overrides: str, batch_size: int = 4):
    base = ["experiment=quickstart", f"data.root={data_root}", "data.num_workers=0", f"data.batch_size={batch_size}",
            "data.val_batch_size=5", "trainer.enable_progress_bar=false", "logger=csv", f"runs_dir={tmp_path / 'runs'}",
            "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=base + list(overrides))


# ---------------------------------------------------------------- train.py as a user runs it (sweeps, launchers)

REPO = CONFIGS.parent
# One epoch of two tiny steps, no sanity check: what the launcher and sweep tests run per job.
TINY = ["experiment=quickstart", "data.num_workers=0", "data.batch_size=4", "data.val_batch_size=4", "logger=csv",
        "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.num_sanity_val_steps=0", "+trainer.enable_model_summary=false",
        "model.decoder.decoder_channels=[32,16,16,8,8]"]


def run_train(*args: str, env: dict | None = None, timeout: int = 600):
    """`python train.py ARGS` in the repository, one torch thread, without the shell's distributed
    variables (a job's ranks are its launcher's); the timeout guards against a hang."""
    import os
    import subprocess
    import sys

    from trashseg.training.launching.jobs import DISTRIBUTED_VARIABLES, SWEEP_GPUS

    environ = {k: v for k, v in os.environ.items() if k not in (*DISTRIBUTED_VARIABLES, SWEEP_GPUS)}
    environ.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=environ, capture_output=True,
                          text=True, timeout=timeout)


def explain(result) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


def with_folds(synthetic_root: Path, tmp_path_factory, folds: int) -> Path:
    """A copy of the synthetic data with `folds` fold files of train_all.json under folds/."""
    import shutil

    from trashseg.data.kfold import make_folds

    root = tmp_path_factory.mktemp(f"folds{folds}") / "data"
    shutil.copytree(synthetic_root, root)
    make_folds(root, "train_all.json", folds, root / "folds", seed=0)
    return root
