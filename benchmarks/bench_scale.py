"""The README's whole loop at 0.25x, 0.5x and 1x the competition's size: wall seconds, peak RSS and
disk written per stage, and how each grows from the smallest to the largest size (an exponent:
1.0 is linear, 0.0 constant).

Data: one synthetic dataset in the competition's layout at the largest size
(`python -m trashseg.data.synthetic --size 512`, train 2,617 / val 655 / test 819 at 1x), and each
smaller size is the first images of each of its splits (images hard-linked): nested sets, so a
growth compares like with like. The polygons are made as dense as the real ones (recycle-sample:
about 12 polygons per image of about 300 vertices; the generator draws fewer and coarser ones):
each polygon becomes 3 overlapping sectors of the same outline with extra vertices along its edges,
so every mask stays the same while rasterising costs what real annotations cost.

Stages, each its own process (the commands of README "From the data to a submission"):
check (`trashseg.data.check`), kfold (5 folds), cache (every mask of train, val, train_all and the
10 fold files into a fresh mask cache), loader (one epoch of train.json, `augment=competition`,
2 workers), train (unet_tiny on every fold, `--steps` batches of 2 a fold, one val batch: the
pipeline, not the model), oof (`trashseg.inference.oof` over train_all), ensemble (folds 0 and 1
over test with `--save-probs`; it writes the CSV), submission_check, pseudo (folds 0 and 1 over
test). Predictions run the model at `--predict-scale` of the image (default 0.125: 64 px) so the
stages' own costs (decode, full-resolution probabilities, metric, CSV, disk) are what is measured;
a 512 px forward adds the same seconds per image at every size.

Peak RSS: the sum over the stage's process tree, sampled every 0.2 s from /proc (shared pages of
forked workers count in each), and the largest single process (the kernel's ru_maxrss). Disk: du of
the size's work folder (folds, mask cache, runs, probabilities, CSV, pseudo-labels) after the stage
minus before. Figures go to WORK/results.json (a later run of some stages replaces theirs).

    python benchmarks/bench_scale.py [--data /tmp/scale_data] [--work /tmp/scale_work] [--scales 0.25 0.5 1]
        [--stages check kfold ...] [--steps 2] [--predict-scale 0.125] [--size 512] [--sweep WORK/0.25x/sweep]
    python benchmarks/bench_scale.py --scales 0.25 0.5 1 --stages      # no stages: the table of WORK/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from tabulate import tabulate

from markdown_row import record

REPO = Path(__file__).resolve().parents[1]
COMPETITION = {"train": 2617, "val": 655, "test": 819}  # images at 1x (train_all = train + val)
STAGES = ("check", "kfold", "cache", "loader", "train", "oof", "ensemble", "submission_check", "pseudo")
FOLDS = 5
SECTORS = 3  # polygons per outline: recycle-sample holds ~12 polygons per image, the generator ~4
VERTICES_PER_POLYGON = 300  # recycle-sample: mean ~297 vertices per polygon (median ~200)


# ---- data -------------------------------------------------------------------------------------

def split_counts(scale: float) -> dict[str, int]:
    return {split: max(1, round(n * scale)) for split, n in COMPETITION.items()}


def scale_name(scale: float) -> str:
    return f"{scale:g}x"


def densified(polygon: list[float], sectors: int, vertices: int) -> list[list[float]]:
    """One COCO polygon as `sectors` overlapping fans from its vertex mean, each with about
    `vertices` vertices (points inserted along the edges). The synthetic outlines are star-shaped
    around their centre, so the fans' union is the outline: the mask does not change."""
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    n = len(points)
    if n < 3 * sectors:
        sectors = 1
    centre = points.mean(axis=0)
    bounds = np.linspace(0, n, sectors + 1).round().astype(int)
    pieces = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        # one vertex past each end: neighbouring fans overlap, so no seam of unlabelled pixels
        arc = points[np.arange(start - 1, stop + 1) % n] if sectors > 1 else points
        ring = np.vstack([centre, arc]) if sectors > 1 else arc
        per_edge = max(1, math.ceil(vertices / len(ring)))
        step = np.arange(per_edge)[None, :, None] / per_edge
        dense = (ring[:, None, :] + step * (np.roll(ring, -1, axis=0) - ring)[:, None, :]).reshape(-1, 2)
        pieces.append(np.round(dense, 1).ravel().tolist())
    return pieces


def density(coco: dict) -> dict[str, float]:
    """Polygons per image and vertices per polygon of a COCO dict (RLE annotations not counted)."""
    polygons = [p for a in coco["annotations"] if isinstance(a["segmentation"], list) for p in a["segmentation"]]
    images = max(1, len(coco["images"]))
    return {"annotations/image": len(coco["annotations"]) / images, "polygons/image": len(polygons) / images,
            "vertices/polygon": float(np.mean([len(p) // 2 for p in polygons])) if polygons else 0.0}


def subset(raw: Path, out: Path, scale: float) -> None:
    """The first images of each split of `raw` at `scale`, polygons densified; built in a temporary
    folder and renamed when whole."""
    counts = split_counts(scale)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    splits = {}
    for split in ("train", "val", "test"):
        coco = json.loads((raw / f"{split}.json").read_text())
        if len(coco["images"]) < counts[split]:
            sys.exit(f"error: {raw} holds {len(coco['images'])} {split} images, {scale_name(scale)} needs "
                     f"{counts[split]}; delete {raw} so the largest size is generated again")
        images = coco["images"][:counts[split]]
        keep = {im["id"] for im in images}
        annotations = [dict(a, segmentation=[piece for polygon in a["segmentation"]
                                             for piece in densified(polygon, SECTORS, VERTICES_PER_POLYGON)])
                       if isinstance(a["segmentation"], list) else a
                       for a in coco["annotations"] if a["image_id"] in keep]
        splits[split] = {**coco, "images": images, "annotations": annotations}
        for im in images:
            (tmp / im["file_name"]).parent.mkdir(parents=True, exist_ok=True)
            os.link(raw / im["file_name"], tmp / im["file_name"])
    splits["train_all"] = {**splits["train"], "images": splits["train"]["images"] + splits["val"]["images"],
                           "annotations": splits["train"]["annotations"] + splits["val"]["annotations"]}
    for split, coco in splits.items():
        (tmp / f"{split}.json").write_text(json.dumps(coco))
    tmp.rename(out)


def prepare_data(data: Path, scales: list[float], size: int) -> dict[float, Path]:
    """Generate the largest size once (kept for later runs: a run of smaller sizes takes its subsets
    from any larger set already generated), then each size's subset once."""
    largest = max(scales)
    counts = split_counts(largest)
    generated = sorted((float(p.name.split("_")[1][:-1]), p) for p in data.glob(f"raw_*x_{size}px") if p.is_dir())
    raw = next((p for s, p in generated if s >= largest), data / f"raw_{scale_name(largest)}_{size}px")
    if not raw.is_dir():
        print(f"generating {counts} at {size} px into {raw} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "trashseg.data.synthetic", "--out", str(raw), "--train", str(counts["train"]),
                        "--val", str(counts["val"]), "--test", str(counts["test"]), "--size", str(size), "--seed", "0"],
                       cwd=REPO, check=True)
    roots = {}
    for scale in scales:
        roots[scale] = data / f"{scale_name(scale)}_{size}px"
        if not roots[scale].is_dir():
            subset(raw, roots[scale], scale)
    return roots


# ---- measuring one stage ----------------------------------------------------------------------

def tree_rss(root_pid: int) -> int:
    """Bytes resident in `root_pid` and all its descendants now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def du(path: Path) -> int:
    """Bytes of the files under `path` (hard links counted once, as du does)."""
    seen, total = set(), 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def measure(command: list[str], work: Path, env: dict[str, str], log: Path) -> dict[str, float]:
    """Run one stage as its own process tree: seconds, peak RSS (tree sum and largest process), disk written."""
    disk_before = du(work)
    peak = [0]
    with open(log, "a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # its rusage covers the whole tree it waited for
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"error: stage failed (exit {proc.returncode}): {' '.join(command)}; its output is in {log}")
    return {"seconds": seconds, "rss_tree_mb": peak[0] / 2**20, "rss_max_process_mb": usage.ru_maxrss / 1024,
            "disk_mb": (du(work) - disk_before) / 2**20}


# ---- the stages -------------------------------------------------------------------------------

def stage_commands(stage: str, root: Path, work: Path, args: argparse.Namespace) -> list[str]:
    python, folds, sweep = sys.executable, work / "folds", work / "sweep"
    models = args.sweep or sweep  # the test-set stages may borrow another size's models: they are not what is measured
    predict = ["--scales", str(args.predict_scale), "--num-workers", "2", "--batch-size", "8", "--data-root", str(root)]
    two_folds = [arg for k in (0, 1) for arg in ("--checkpoint", str(models / str(k) / "checkpoints" / "best.ckpt"))]
    return {
        "check": [python, "-m", "trashseg.data.check", "--root", str(root), "--ann", "train_all.json"],
        "kfold": [python, "-m", "trashseg.data.kfold", "--root", str(root), "--ann", "train_all.json", "--folds",
                  str(FOLDS), "--seed", "0", "--out", str(folds), "--force"],
        "cache": [python, __file__, "--internal", "cache", "--root", str(root), "--folds-dir", str(folds)],
        "loader": [python, __file__, "--internal", "loader", "--root", str(root), "--folds-dir", str(folds)],
        "train": [python, "train.py", "-m", "data=recycle", "model=unet_tiny", "augment=competition", "logger=csv",
                  "experiment_name=scale", f"data.root={root}", f"data.folds_dir={folds}",
                  "data.fold=" + ",".join(map(str, range(FOLDS))), "data.batch_size=2", "data.val_batch_size=2",
                  "data.num_workers=2", "trainer.max_epochs=1", f"trainer.limit_train_batches={args.steps}",
                  "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
                  f"hydra.sweep.dir={sweep}"],
        "oof": [python, "-m", "trashseg.inference.oof", str(sweep), *predict],
        "ensemble": [python, "inference.py", *two_folds, "--split", "test", *predict, "--save-probs", str(work / "probs"),
                     "--out", str(work / "submission.csv")],
        "submission_check": [python, "-m", "trashseg.submission", "check", str(work / "submission.csv"), "--test-json",
                             str(root / "test.json")],
        "pseudo": [python, "-m", "trashseg.inference.pseudo", *two_folds, "--split", "test", *predict,
                   "--out", str(work / "pseudo" / "test_pseudo.json"), "--min-confidence", "0.9"],
    }[stage]


def annotation_files(root: Path, folds_dir: Path) -> list[Path]:
    """What a 5-fold loop reads: train, val, train_all and every fold's train and val file."""
    return [root / f"{name}.json" for name in ("train", "val", "train_all")] + [
        folds_dir / f"fold{k}_{side}.json" for k in range(FOLDS) for side in ("train", "val")]


def build_cache(root: Path, folds_dir: Path) -> None:
    """Every mask of every annotation file, into the mask cache ($TRASHSEG_CACHE)."""
    from trashseg.data import CocoSegmentationDataset

    for ann in annotation_files(root, folds_dir):
        dataset = CocoSegmentationDataset(root, ann, mode="val")
        for index in range(len(dataset)):
            dataset.mask(index)
        print(f"{ann.name}: {len(dataset)} masks", flush=True)


def loader_epoch(root: Path) -> None:
    """One epoch of train.json's training loader: augment=competition, 2 workers, batch 8."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from trashseg.data import TrashDataModule

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=recycle", "augment=competition", f"data.root={root}",
                                                      "data.num_workers=2"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    datamodule = TrashDataModule(**plain["data"], augment=plain["augment"])
    batches = sum(1 for _ in datamodule.train_dataloader())
    print(f"one epoch: {batches} batches of {datamodule.batch_size}", flush=True)


# ---- the table ----------------------------------------------------------------------------------

def growth(small: float, large: float, ratio: float) -> str:
    """log(large / small) / log(ratio): 1.0 grows linearly with the data, 0.0 not at all."""
    if ratio <= 1 or small <= 0 or large <= 0:
        return "-"
    return f"{math.log(large / small) / math.log(ratio):.2f}"


def marginal_growth(values: list[float], scales: list[float]) -> str:
    """With three sizes each double the last: log2 of (x3 - x2) / (x2 - x1), the growth of what a
    stage adds on top of its fixed cost (start-up, imports): 1.0 linear, 2.0 quadratic."""
    if len(values) != 3 or not math.isclose(scales[1] / scales[0], 2) or not math.isclose(scales[2] / scales[1], 2):
        return "-"
    lower, upper = values[1] - values[0], values[2] - values[1]
    if lower <= 0 or upper <= 0:
        return "-"  # within the noise: no growth to measure
    return f"{math.log2(upper / lower):.2f}"


def table(results: dict, scales: list[float]) -> list[list[object]]:
    """One row per stage: each figure per size (smallest first, "-" where not measured) and its growth
    exponent between the smallest and the largest size measured."""
    rows = []
    for stage in STAGES:
        figures = {s: results.get(scale_name(s), {}).get(stage) for s in scales}
        measured = [s for s in scales if figures[s]]
        if not measured:
            continue
        row = [stage]
        for key, fmt in (("seconds", "{:.1f}"), ("rss_tree_mb", "{:.0f}"), ("rss_max_process_mb", "{:.0f}"), ("disk_mb", "{:.1f}")):
            row.append(" / ".join(fmt.format(figures[s][key]) if figures[s] else "-" for s in scales))
            row.append(growth(figures[measured[0]][key], figures[measured[-1]][key], measured[-1] / measured[0]))
            if key in ("seconds", "rss_max_process_mb"):
                row.append(marginal_growth([figures[s][key] for s in measured], measured))
        rows.append(row)
    return rows


HEADERS = ["stage", "seconds", "growth", "growth above the fixed cost", "peak RSS, tree (MB)", "growth",
           "peak RSS, largest process (MB)", "growth", "growth above the fixed cost", "disk written (MB)", "growth"]


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/scale_data"), help="datasets, generated once and kept")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scale_work"), help="each size's folds, cache, runs, outputs")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--stages", nargs="*", choices=STAGES, default=list(STAGES),
                        help="a later stage needs the earlier ones' outputs in --work; none: print the table of "
                        "WORK/results.json")
    parser.add_argument("--steps", type=int, default=2, help="training batches (of 2) per fold")
    parser.add_argument("--predict-scale", type=float, default=0.125, help="the model's input size as a fraction of the image")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--sweep", type=Path, help="the fold runs ensemble and pseudo use (default: this size's own "
                        "train stage); lets them run at a size whose train and oof stages are skipped")
    parser.add_argument("--internal", choices=("cache", "loader"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folds-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal == "cache":
        return build_cache(args.root, args.folds_dir)
    if args.internal == "loader":
        return loader_epoch(args.root)

    scales = sorted(set(args.scales))
    roots = prepare_data(args.data.resolve(), scales, args.size)
    work_root = args.work.resolve()
    results_path = work_root / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    commit = git_commit()
    for scale in scales:
        name = scale_name(scale)
        work = work_root / name
        work.mkdir(parents=True, exist_ok=True)
        coco = json.loads((roots[scale] / "train_all.json").read_text())
        print(f"{name}: {split_counts(scale)} images, " + ", ".join(f"{k} {v:.1f}" for k, v in density(coco).items()), flush=True)
        # every stage's mask cache lives in the size's work folder, so du sees it and no run shares it
        env = {**os.environ, "TRASHSEG_CACHE": str(work / "cache"), "WANDB_MODE": "offline"}
        for stage in args.stages:
            # the stages' output goes beside the work folder, not into it: du measures what the stages write
            figures = measure(stage_commands(stage, roots[scale], work, args), work, env, work_root / f"{name}.log")
            results.setdefault(name, {})[stage] = {**figures, "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M")}
            results_path.write_text(json.dumps(results, indent=1))
            print(f"  {stage:<17} {figures['seconds']:8.1f} s {figures['rss_tree_mb']:7.0f} MB tree "
                  f"{figures['rss_max_process_mb']:7.0f} MB largest {figures['disk_mb']:9.1f} MB written", flush=True)

    rows = table(results, scales)
    print(f"\nsizes {' / '.join(scale_name(s) for s in scales)} (growth: the exponent from the smallest to the largest)")
    print(tabulate(rows, headers=HEADERS, tablefmt="pipe"))
    # docs/results/scale.md: date | machine | command | then the HEADERS
    record(rows)


if __name__ == "__main__":
    main()
