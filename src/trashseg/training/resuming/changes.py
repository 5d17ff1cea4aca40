"""Resuming with a config that differs from the checkpoint's.

A resumed run restores the model, optimizer (its lr and state), scheduler and data position from
the checkpoint, so most changed keys would not take effect while config.yaml said they had:
those are refused, naming every one. Keys that only say how long, where or how fast to run are
applied for real (the schedule is rebuilt from the Trainer's new estimate) and recorded in the
run folder's resumes.yaml: the run's length (`trainer.max_epochs`, `max_steps`, `max_time`,
`min_*`, `limit_train_batches`), its place (`data.root`, the cache, `runs_dir`) and its speed
(devices, precision, loader workers, validation batch size), and logging.

A resume never rewrites the provenance of the steps already trained: config.yaml keeps what the
run started with, resumes.yaml what each resume changed. `resume=auto` picks a run only on the
same data (`data.root` equal too, see other_run_changes): a moved data set is continued by naming
the run. `finished_by` tells a run that this command's length has nothing left to train.
"""

from __future__ import annotations

from collections.abc import Mapping

from trashseg.run_layout import flat_keys

NOT_RECORDED = ("resume", "runs_dir")  # where the run was found, not how it trains
# Dotted keys (or prefixes ending in ".") a resume may change.
APPLIED_ON_RESUME = (
    "resume", "runs_dir", "logger.", "threads", "channels_last", "nonfinite_losses_in_a_row",
    "trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.min_epochs", "trainer.min_steps",
    "trainer.limit_train_batches",
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.precision",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps", "trainer.benchmark",
    "data.root", "data.cache_dir", "data.num_workers", "data.pin_memory", "data.persistent_workers",
    "data.val_batch_size", "data.synthetic.",
)


def _applied(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in APPLIED_ON_RESUME)


def _same(a, b) -> bool:
    try:
        return bool(a == b) or (a != a and b != b)  # NaN == NaN for the comparison's purpose
    except (TypeError, ValueError):
        return repr(a) == repr(b)


def config_changes(saved: Mapping, new: Mapping) -> dict[str, tuple]:
    """{dotted key: (checkpoint's value, new value)} for every key that differs. A key the
    checkpoint's config lacks and the new one sets to null (an option added since, off by
    default) is no change."""
    old, now = flat_keys(saved), flat_keys(new)
    missing = object()
    return {k: (old.get(k), now.get(k)) for k in sorted(old.keys() | now.keys())
            if not _same(old.get(k, missing), now.get(k, missing)) and not (k not in old and now[k] is None)}


def _refused(key: str) -> bool:
    """A change a resume cannot apply (NOT_RECORDED keys are all applied ones)."""
    return key not in NOT_RECORDED and not _applied(key)


# Where the images are: applied when the run is named (a data set moved to another disk), but
# another data.root never makes `resume=auto` pick a run, which would train on other images.
SAME_DATA = ("data.root",)


def other_run_changes(saved: Mapping, new: Mapping) -> dict[str, tuple]:
    """The changes that make the run `saved` not the one `new` continues when `resume=auto` picks a
    run: the refused ones, and other data."""
    return {k: v for k, v in config_changes(saved, new).items() if _refused(k) or k in SAME_DATA}


def _epochs_done(checkpoint: Mapping) -> int | None:
    """Whole epochs the checkpoint's run trained, as Lightning's fit loop counts them: `processed`,
    plus the epoch whose last batch was served when its checkpoint came from the last validation
    inside it (val_check_interval < 1), which Lightning ends without a step on resume."""
    loops = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs, batches = loops.get("epoch_progress", {}).get("current"), loops.get("epoch_loop.batch_progress", {})
    if epochs is None:
        return None
    return epochs["processed"] + int(epochs["started"] > epochs["processed"] and bool(batches.get("is_last_batch")))


def finished_by(checkpoint: Mapping, trainer: Mapping) -> str | None:
    """The key (`trainer.max_epochs=2`) at which the run of `checkpoint` is finished under these
    trainer settings, so that fitting from it trains no step; None when it has steps left."""
    steps, epochs = trainer.get("max_steps"), trainer.get("max_epochs")
    if steps not in (None, -1) and checkpoint.get("global_step", 0) >= steps:
        return f"trainer.max_steps={steps}"
    done = _epochs_done(checkpoint)
    if epochs not in (None, -1) and done is not None and done >= epochs:
        return f"trainer.max_epochs={epochs}"
    return None


def listed_changes(changes: Mapping[str, tuple], shown: int = 6) -> str:
    """`key (old -> new), ...` of the first `shown` changes, then how many more."""
    listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in list(changes.items())[:shown])
    return listed + (f" and {len(changes) - shown} more" if len(changes) > shown else "")


def check_resume_config(saved: Mapping, new: Mapping, ckpt_name: str) -> dict[str, tuple]:
    """The changes a resume applies; a ValueError naming the ones it cannot."""
    changes = {k: v for k, v in config_changes(saved, new).items() if k not in NOT_RECORDED}
    refused = {k: v for k, v in changes.items() if _refused(k)}
    if refused:
        raise ValueError(
            f"resuming {ckpt_name} with a different {listed_changes(refused)}: the checkpoint restores the model, optimizer and "
            "schedule, so this would not take effect; drop these overrides to resume, or start a new run without "
            "resume= to train with them")
    return changes
