"""The Lightning callbacks and loggers a run trains with: its run folder's files (run_folder), the
metrics.csv history (history) and the W&B logger (loggers), EMA / SWA weight averaging (averaging),
non-finite losses (nonfinite) and W&B media (wandb_media)."""
