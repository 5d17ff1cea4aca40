"""The shape of the house: files and lines per package folder, and the trip the run config takes
through `training.run.train` on a tiny quickstart (2 steps, 32 px).

The trip is read with a profiler hook: every call of a trashseg function (or train.py) that receives
the run config, or one of its top-level sections, as an argument is a visit. Consecutive visits to
one module are one stay; the modules visited are the rooms; a climb back up is a call from a module
into one earlier in the data flow (config -> data -> models -> training -> checkpoint -> inference,
`LAYERS` below; the shared foundations at the package top, errors, atomic writes, precision, the run
folder's layout, are no stage, so calls into them climb nowhere); a return to run.py is a stay in
training's run module after a stay elsewhere.

    python benchmarks/bench_house.py                 # this checkout's src/
    PYTHONPATH=/tmp/old/src python benchmarks/bench_house.py --src /tmp/old/src   # another tree, for before/after
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Earlier stages first: a call from a later stage into an earlier one climbs back up the data flow.
# trashseg.checkpoint_file and trashseg.checkpoint (older and newer trees) are the checkpoint stage.
LAYERS = ["trashseg.data", "trashseg.models", "trashseg.training", "trashseg.checkpoint", "trashseg.inference",
          "trashseg.tools"]


def layer(module: str) -> int | None:
    """The module's stage, or None for a foundation (a top-level helper module every stage may use)."""
    matches = [i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + ".")
               or module.startswith(prefix + "_")]
    return matches[-1] if matches else None


def folder_table(src: Path) -> list[str]:
    rows = ["| folder | .py files | lines | files under 70 lines |", "|---|---|---|---|"]
    package = src / "trashseg"
    folders = sorted({p.parent for p in package.rglob("*.py")})
    total_files = total_lines = 0
    for folder in folders:
        files = sorted(folder.glob("*.py"))
        lines = [len(f.read_text().splitlines()) for f in files]
        total_files, total_lines = total_files + len(files), total_lines + sum(lines)
        small = sum(1 for n in lines if n < 70 and n > 0)
        rows.append(f"| {folder.relative_to(src)} | {len(files)} | {sum(lines)} | {small} |")
    rows.append(f"| all | {total_files} | {total_lines} | |")
    return rows


def config_trip(data_root: Path, work: Path) -> list[str]:
    """The modules, in call order, of the trashseg calls that received the run config or a section of it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from small_runs import small_quickstart

    from omegaconf import OmegaConf

    from trashseg.training.run import train

    cfg = small_quickstart(data_root, work, "trainer.max_steps=2", "trainer.max_epochs=1", "trainer.limit_val_batches=1")
    tracked: set[int] = set()

    def track(obj) -> None:
        tracked.add(id(obj))
        if isinstance(obj, dict):
            tracked.update(id(v) for v in obj.values() if isinstance(v, dict))

    track(cfg)
    visits: list[str] = []
    original = OmegaConf.to_container

    def to_container(*args, **kwargs):  # the plain dict train() makes of cfg is the config too
        out = original(*args, **kwargs)
        if args and args[0] is cfg:
            track(out)
        return out

    def profile(frame, event, arg):
        if event != "call":
            return
        name = frame.f_globals.get("__name__", "")
        if not (name.startswith("trashseg") or frame.f_code.co_filename.endswith("train.py")):
            return
        code = frame.f_code
        for var in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]:
            if id(frame.f_locals.get(var)) in tracked:
                visits.append(name)
                return

    OmegaConf.to_container = staticmethod(to_container)
    sys.setprofile(profile)
    try:
        train(cfg, work / "run")
    finally:
        sys.setprofile(None)
        OmegaConf.to_container = staticmethod(original)
    return visits


def trip_lines(visits: list[str]) -> list[str]:
    stays = [m for i, m in enumerate(visits) if i == 0 or visits[i - 1] != m]
    staged = [m for m in stays if layer(m) is not None]
    climbs = sum(1 for a, b in zip(staged, staged[1:]) if layer(b) < layer(a))
    run_returns = max(sum(1 for m in stays if m.endswith("training.run")) - 1, 0)
    rooms = Counter(stays)
    return [f"config trip through train(): {len(stays)} stays in {len(rooms)} rooms, {climbs} climbs back up, "
            f"run.py re-entered {run_returns} times",
            "rooms (stays): " + ", ".join(f"{m.removeprefix('trashseg.')} ({n})" for m, n in rooms.most_common())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the src/ folder to count (default: this checkout's)")
    parser.add_argument("--no-trip", action="store_true", help="the folder table only (no training)")
    args = parser.parse_args()
    print("\n".join(folder_table(args.src)))
    if args.no_trip:
        return
    from trashseg.data.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic"
        generate_dataset(data, n_train=6, n_val=2, n_test=1, size=32, seed=0)
        print("\n".join(trip_lines(config_trip(data, Path(tmp)))))


if __name__ == "__main__":
    main()
