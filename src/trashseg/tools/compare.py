"""Compare training runs from their folders alone (no W&B needed).

    python -m trashseg.tools.compare runs/ [--sort val/mIoU] [--out report.md]

One row per run: name, date, the config keys that differ between the runs (flattened,
dotted), best val mIoU and its epoch, per-class IoU at that epoch, training time.
Writes Markdown + CSV, a PNG of all val mIoU curves and a per-class IoU bar chart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from trashseg.run_layout import (  # noqa: E402
    CONFIG_FILE, MAIN_METRIC, METRICS_FILE, best_row, failure_reason, flat_keys, is_run, read_config, read_metrics)

log = logging.getLogger("trashseg.compare")

CLASS_PREFIX = "val/IoU/"
# Keys that name the run itself rather than how it was trained.
IDENTITY_KEYS = ("hydra.", "paths.", "logger.wandb.name", "logger.wandb.id", "run_dir", "resume")


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Run folders under `paths`; a folder that is neither a run nor holds runs is skipped with a warning."""
    runs = []
    for path in paths:
        if is_run(path):  # compared by what it started with and what it logged
            missing = [name for name in (CONFIG_FILE, METRICS_FILE) if not (path / name).is_file()]
            if missing:
                log.warning("skipping %s: a run folder without %s yet", path, " and ".join(missing))
            else:
                runs.append(path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else []
        found = find_runs(children)
        if not found and (reason := failure_reason(path)):  # a sweep job refused before training
            log.info("skipping %s: its job failed: %s", path, reason)
        elif not found:
            log.warning("skipping %s: not a run folder (no config.yaml or checkpoints/) and holds none", path)
        runs += found
    return runs


def flat_config(run: Path) -> dict:
    config = read_config(run)
    flat = flat_keys(config)
    return {k: (str(v) if isinstance(v, (list, dict)) else v) for k, v in flat.items() if not k.startswith(IDENTITY_KEYS)}


def differing_keys(configs: list[dict]) -> list[str]:
    keys = sorted(set().union(*configs))
    return [k for k in keys if len({repr(c.get(k, "<absent>")) for c in configs}) > 1]


def run_summary(run: Path, metrics: pd.DataFrame) -> dict:
    started = (run / CONFIG_FILE).stat().st_mtime
    row = {"run": str(run), "date": dt.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M")}
    best = best_row(metrics)
    if best is None:
        return row | {"best val/mIoU": float("nan"), "best epoch": None}
    row |= {"best val/mIoU": float(best[MAIN_METRIC]), "best epoch": int(best["epoch"])}
    row |= {c.removeprefix(CLASS_PREFIX): float(best[c]) for c in metrics.columns if c.startswith(CLASS_PREFIX)}
    # From the folder alone: config.yaml is written at start, metrics.csv last touched at the end.
    row["train time (min)"] = round(((run / METRICS_FILE).stat().st_mtime - started) / 60, 2)
    return row


def compare(runs: list[Path], sort: str = "best val/mIoU") -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The comparison table and each run's metrics, keyed by run path."""
    metrics = {str(r): read_metrics(r) for r in runs}
    configs = [flat_config(r) for r in runs]
    keys = differing_keys(configs)
    rows = [run_summary(r, metrics[str(r)]) | {k: c.get(k) for k in keys} for r, c in zip(runs, configs)]
    table = pd.DataFrame(rows)
    front = ["run", "date", *keys, "best val/mIoU", "best epoch"]
    table = table[front + [c for c in table.columns if c not in front]]
    sort = sort if sort in table else f"best {sort}"
    return table.sort_values(sort, ascending=False, na_position="last").reset_index(drop=True), metrics


def short_name(run: str) -> str:
    """experiment/timestamp: enough to tell runs apart in a legend."""
    return "/".join(Path(run).parts[-2:])


def plot_curves(metrics: dict[str, pd.DataFrame], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, frame in metrics.items():
        val = frame.dropna(subset=[MAIN_METRIC]) if MAIN_METRIC in frame else None
        if val is not None and not val.empty:
            ax.plot(val["epoch"], val[MAIN_METRIC], marker="o", label=short_name(name))
    ax.set(xlabel="epoch", ylabel=MAIN_METRIC, title="validation mIoU per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_class_iou(table: pd.DataFrame, class_names: list[str], out: Path) -> None:
    frame = table.set_index(table["run"].map(short_name))[class_names]
    fig, ax = plt.subplots(figsize=(max(8, len(class_names) * 0.9), 5))
    frame.T.plot.bar(ax=ax, width=0.8, rot=30)
    ax.set(ylabel="IoU at the best epoch", title="per-class IoU", ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare training runs from their run folders.")
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("runs")], help="run folders or folders holding runs")
    parser.add_argument("--sort", default=MAIN_METRIC, help="column to sort by, descending (default val/mIoU)")
    parser.add_argument("--out", type=Path, help="write report.md here, with .csv and PNGs beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    runs = find_runs(args.paths)
    if not runs:
        print(f"no runs found under {', '.join(map(str, args.paths))} (a run folder with config.yaml and metrics.csv)", file=sys.stderr)
        return 1
    table, metrics = compare(runs, args.sort)
    markdown = table.to_markdown(index=False, floatfmt=".4f")
    print(markdown)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        class_names = [c.removeprefix(CLASS_PREFIX) for f in metrics.values() for c in f.columns if c.startswith(CLASS_PREFIX)]
        class_names = list(dict.fromkeys(class_names))
        curves, bars = args.out.with_name(args.out.stem + "_miou.png"), args.out.with_name(args.out.stem + "_class_iou.png")
        plot_curves(metrics, curves)
        if class_names:
            plot_class_iou(table, class_names, bars)
        table.to_csv(args.out.with_suffix(".csv"), index=False)
        args.out.write_text(f"# Run comparison\n\n{markdown}\n\n![val mIoU]({curves.name})\n\n![per-class IoU]({bars.name})\n")
        print(f"wrote {args.out}, {args.out.with_suffix('.csv').name}, {curves.name}, {bars.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
