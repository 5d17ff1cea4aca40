"""Knowledge distillation on ../shared/data/trashcan at the CPU recipe, measured with train.py itself:

1. a teacher (default unet_resnet34, random init) trained for --steps, or a finished run given
   with --teacher-run (e.g. the recipe's own unet_tiny run; its steps are its own);
2. a small student (default lraspp_mobilenet, random init) trained alone for --steps;
3. the same student, same seed and steps, distilled from the teacher's best.ckpt
   (`distill=kd`, --alpha, --temperature).

Every run is the 180x240 CPU recipe (`experiment=bench/cpu_recipe_180`: 128x128 object
crops of 180x240 frames, batch 16, fully weighted CE + Dice, AdamW 2e-3 with a poly schedule sized to the
budget) with no time limit: the same step budget for all, validated every --steps / 2 steps; the best
val mIoU of each run and its per-class IoU are printed. `--data synthetic` runs the same three on the built-in synthetic data
(`experiment=quickstart`, 128 px), for a quick check.

Run again with the same --work to finish an interrupted benchmark: finished runs are kept and a
killed one resumes from its last.ckpt (train.py's exact resume).

    python benchmarks/bench_distill_trashcan.py [--steps 500] [--teacher unet_resnet34 | --teacher-run DIR]
        [--student lraspp_mobilenet] [--alpha 0.5] [--temperature 2] [--data trashcan|synthetic] [--work DIR] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from markdown_row import record

REPO = Path(__file__).resolve().parents[1]
TRASHCAN = REPO.parent / "shared" / "data" / "trashcan"
RECIPES = {
    "trashcan": ["experiment=bench/cpu_recipe_180", "trainer.max_time=null"],
    "synthetic": ["experiment=quickstart", "logger=csv"],
}


def budget(steps: int) -> tuple[int, list[str]]:
    """`steps` (rounded down to even) optimizer steps over as many epochs as that takes, validated
    halfway and at the end: the step count and the overrides."""
    every = max(steps // 2, 1)
    total = 2 * every if steps > 1 else 1
    return total, ["trainer.max_epochs=-1", f"++trainer.max_steps={total}", "trainer.check_val_every_n_epoch=null",
                   f"++trainer.val_check_interval={every}", "trainer.enable_progress_bar=false", "data.num_workers=2"]


def finished(run_dir: Path, steps: int) -> bool:
    """The run validated after its last step (what `budget` asks for)."""
    metrics = run_dir / "metrics.csv"
    return metrics.is_file() and int(pd.read_csv(metrics)["step"].max()) + 1 >= steps


def train(run_dir: Path, args: list[str], steps: int) -> float:
    """Seconds train.py took; NaN for a run an earlier invocation finished."""
    if finished(run_dir, steps):
        return float("nan")
    last = run_dir / "checkpoints" / "last.ckpt"
    if run_dir.exists() and not last.is_file():
        shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to continue
    start = time.perf_counter()
    resume = [f"resume={last}"] if last.is_file() else []
    subprocess.run([sys.executable, "train.py", *args, *resume, f"hydra.run.dir={run_dir}"], cwd=REPO, check=True)
    return time.perf_counter() - start


def best_row(run_dir: Path) -> pd.Series:
    """The validation row with the highest val/mIoU (what best.ckpt holds)."""
    val = pd.read_csv(run_dir / "metrics.csv").dropna(subset=["val/mIoU"])
    return val.loc[val["val/mIoU"].idxmax()]


def parameters_and_classes(run_dir: Path) -> tuple[float, list[str]]:
    """Millions of network parameters in best.ckpt, and the run's class list (in label order)."""
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    params = sum(v.numel() for k, v in ckpt["state_dict"].items() if k.startswith("model.") and v.is_floating_point())
    return params / 1e6, list(ckpt["hyper_parameters"]["cfg"]["data"]["classes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps per model (batch 16 on TrashCan)")
    parser.add_argument("--teacher", default="unet_resnet34", help="a configs/model name")
    parser.add_argument("--teacher-run", type=Path, help="a finished train.py run folder to use as the teacher instead "
                        "of training one (its checkpoints/best.ckpt)")
    parser.add_argument("--student", default="lraspp_mobilenet", help="a configs/model name")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--data", choices=sorted(RECIPES), default="trashcan")
    parser.add_argument("--work", type=Path, help="this benchmark's folder (default: benchmarks/results/distill/<data>_<time>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. data.batch_size=8")
    args = parser.parse_args()
    if args.data == "trashcan" and not TRASHCAN.is_dir():
        sys.exit(f"error: {TRASHCAN} not found; this benchmark needs the TrashCan data (or run it with --data synthetic)")
    work = (args.work or REPO / "benchmarks" / "results" / "distill" / f"{args.data}_{time.strftime('%Y-%m-%d_%H-%M-%S')}").resolve()
    steps, schedule = budget(args.steps)
    common = [*RECIPES[args.data], *schedule, *args.overrides]
    teacher_dir = (args.teacher_run or work / "teacher").resolve()
    if args.teacher_run and not (teacher_dir / "checkpoints" / "best.ckpt").is_file():
        sys.exit(f"error: --teacher-run {args.teacher_run}: no checkpoints/best.ckpt there; give a finished train.py run folder")
    teacher_name = f"teacher ({'run ' + teacher_dir.name if args.teacher_run else args.teacher})"
    runs = {
        teacher_name: (teacher_dir, [f"model={args.teacher}"]),
        f"student alone ({args.student})": (work / "student", [f"model={args.student}"]),
        f"distilled student ({args.student}, alpha {args.alpha}, T {args.temperature})": (work / "distilled", [
            f"model={args.student}", "distill=kd", f"distill.teacher=[{teacher_dir / 'checkpoints' / 'best.ckpt'}]",
            f"distill.alpha={args.alpha}", f"distill.temperature={args.temperature}"]),
    }
    rows, per_class = [], {}
    for name, (run_dir, extra) in runs.items():  # in order: the distilled student needs the teacher's checkpoint
        reused = args.teacher_run is not None and run_dir == teacher_dir
        seconds = float("nan") if reused else train(run_dir, [*common, *extra], steps)
        best = best_row(run_dir)
        params, classes = parameters_and_classes(run_dir)
        rows.append({"model": name, "params (M)": params, "steps at best": int(best["step"]) + 1,
                     "train minutes": seconds / 60, "best val mIoU": float(best["val/mIoU"])})
        per_class[name] = {c: float(best[f"val/IoU/{c}"]) for c in classes}
    print(f"\n{args.data}, {steps} steps per model, runs under {work}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"))
    print("\nper-class val IoU at each run's best validation:")
    print(pd.DataFrame(per_class).T.to_markdown(floatfmt=".3f"))
    record([[f"{v:.4f}" if isinstance(v, float) else v for v in r.values()] for r in rows])


if __name__ == "__main__":
    main()
