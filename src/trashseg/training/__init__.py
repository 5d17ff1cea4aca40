"""Training: `train(cfg, run_dir)` fits one run from a composed config (train.py calls it).

Where to look:
    run.py            train(): the run config, the Trainer, fit, the closing lines
    run_config.py     the composed config resolved once into the run config; every check runs there
    config_keys.py    unknown config keys, on the command line and in the composed config
    module.py         the LightningModule: loss, metric, optimizer and scheduler from the run config
    losses.py         the loss terms; distill.py: distillation from teacher checkpoints
    summary.py        what a run prints when it ends
    optimization/     optimizer, parameter groups and layer decay; schedules and their checks; encoder warm-up
    resuming/         which checkpoint a run continues, what a resume may change, mid-epoch resume
    launching/        launchers, processes, threads, sweeps and their failed jobs
    callbacks/        run folder files, metrics.csv, weight averaging, non-finite losses, W&B media
What a run folder holds and where: trashseg.run_layout; the checkpoint format: trashseg.checkpoint.
"""

__all__ = ["train"]


def __getattr__(name: str):
    # `train` on first use: the command-line checks (config_keys) and the launcher's Hydra callbacks
    # import their modules before Hydra sets up logging, and Lightning imported then keeps a console of its own.
    if name == "train":
        from .run import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
