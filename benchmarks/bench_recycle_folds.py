"""The competition's own images on a CPU: recycle-sample's 60 photos (train + val) as 5 folds
(`trashseg.data.kfold`), `experiment=recycle_sample_pretrained` (Unet on ImageNet EfficientNet-Lite0
at 256 px) on every fold, and the OOF mIoU over all 60 (`trashseg.inference.oof --resize 256 256`),
beside the same loop from random init (`model.pretrained=null`). The two sweeps run side by side
(one thread each), so their wall times compare.

    python benchmarks/bench_recycle_folds.py [--epochs 24] [--work benchmarks/results/recycle_folds] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

from coco_pool import write_pool
from markdown_row import record

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "recycle-sample"
VARIANTS = {"ImageNet Lite0 (package)": [], "random init": ["model.pretrained=null"]}
FOLDS = 5


def pool_json(out: Path) -> Path:
    """train.json + val.json in one COCO file (file names are already relative to the sample's root)."""
    return write_pool([(SAMPLE / f"{split}.json", "") for split in ("train", "val")], out)


def sweep(work: Path, name: str, overrides: list[str], epochs: int) -> subprocess.Popen:
    folds = ",".join(map(str, range(FOLDS)))
    return subprocess.Popen(
        [sys.executable, "train.py", "-m", "experiment=recycle_sample_pretrained", f"data.fold={folds}",
         f"data.folds_dir={work / 'folds'}", f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false",
         f"hydra.sweep.dir={work / name}", *overrides],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "w"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=24, help="epochs per fold (48 images at batch 4: 12 steps each)")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "recycle_folds")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to both sweeps")
    args = parser.parse_args()
    if not SAMPLE.is_dir():
        sys.exit(f"error: {SAMPLE} not found; this benchmark needs the recycle sample")
    work = args.work.resolve() / time.strftime("%Y-%m-%d_%H-%M-%S")
    pool = pool_json(work / "pool.json")
    subprocess.run([sys.executable, "-m", "trashseg.data.kfold", "--root", str(SAMPLE), "--ann", str(pool),
                    "--folds", str(FOLDS), "--seed", "0", "--out", str(work / "folds")], cwd=REPO, check=True)
    names = {name: f"sweep_{i}" for i, name in enumerate(VARIANTS)}
    start = time.perf_counter()
    running = {name: sweep(work, names[name], overrides + args.overrides, args.epochs)
               for name, overrides in VARIANTS.items()}
    minutes = {}
    while len(minutes) < len(running):  # each sweep's own wall time, while the other runs beside it
        for name, process in running.items():
            if name not in minutes and process.poll() is not None:
                if process.returncode != 0:
                    sys.exit(f"error: the {name} sweep failed; see {work / names[name]}.log")
                minutes[name] = (time.perf_counter() - start) / 60
        time.sleep(2)
    rows = []
    for name in running:
        subprocess.run([sys.executable, "-m", "trashseg.inference.oof", str(work / names[name]), "--resize", "256", "256",
                        "--num-workers", "0"], cwd=REPO, check=True)
        report = json.loads((work / names[name] / "oof" / "oof.json").read_text())
        rows.append({"encoder": name, "OOF mIoU (60 images)": report["cv"]["mIoU"],
                     "per-fold mIoU": " ".join(f"{f['mIoU']:.3f}" for f in report["folds"]),
                     "pixel acc": report["cv"]["pixel_acc"], "mean per-image mIoU": report["cv"]["mIoU_per_image"],
                     "sweep wall min": minutes[name]})
    print(f"{FOLDS} folds of recycle-sample, {args.epochs} epochs per fold, {work}")
    print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".3f"))
    record([[f"{v:.3f}" if isinstance(v, float) else v for v in r.values()] for r in rows], threads=1)


if __name__ == "__main__":
    main()
