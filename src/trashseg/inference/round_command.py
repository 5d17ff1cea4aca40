"""The train.py command of the next pseudo-label round, as the pseudo-labeller prints it: the
experiment, overrides and data root of the runs that made the labels, their folds, and the new
file as an extra training source. A fixed recipe here once sent a synthetic-data sweep to
experiment=recycle_pseudo (GPU, ImageNet weights, data/recycle), which failed on its first fold.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

import yaml

# Overrides the next round sets itself (or must not repeat: the folder, a resume of the old run).
REPLACED = ("data.root", "data.fold", "data.extra_train", "resume")


def typed_overrides(source_path: Path) -> list[str] | None:
    """The overrides a run was started with (Hydra's .hydra/overrides.yaml in its run folder),
    None for a checkpoint or exported file outside a run folder."""
    run = source_path.resolve().parent.parent
    path = run / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else None


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def extra_train_override(pseudo_file: Path, image_root: Path) -> str:
    """The Hydra override that trains on `pseudo_file` as an extra source: crowd regions ignored,
    and its file names (copied from the labelled JSON) resolved against the folder they are
    relative to, `image_root`. Without it a source inherits the main data's images_relative_to,
    and with `ann` (TrashCan) looked for the images beside the pseudo file."""
    ann, root = _hydra_quoted(pseudo_file.resolve()), _hydra_quoted(Path(image_root).resolve())
    return f"data.extra_train=[{{ann:{ann},root:{root},images_relative_to:root,crowd:ignore}}]"


def _hydra_quoted(path: Path) -> str:
    """A Hydra quoted string: paths with spaces, commas or brackets parse as one value."""
    return '"' + str(path).replace('"', '\\"') + '"'


def next_sweep_dir(sweep: Path) -> Path:
    """runs/folds/x -> runs/folds/x_round2; x_round2 -> x_round3."""
    match = re.fullmatch(r"(.*)_round(\d+)", sweep.name)
    name = f"{match[1]}_round{int(match[2]) + 1}" if match else f"{sweep.name}_round2"
    return sweep.with_name(name)


def next_round_command(sources: Sequence, pseudo_file: Path, image_root: Path, data_root: Path | None,
                       sweeps: Sequence[Path] = ()) -> str:
    """`sources`: the models that made the labels (`.path`, `.cfg`), the first one's run giving the
    experiment and overrides; `sweeps`: the --checkpoints-from folders they came from."""
    cfg = sources[0].cfg
    typed = typed_overrides(Path(sources[0].path))
    if typed is None:  # no run folder at hand: the experiment its config names
        name = cfg.get("experiment_name")
        typed = [f"experiment={name}"] if name and name != "default" else []
    words = ["python", "train.py"]
    folds = sorted({s.cfg["data"].get("fold") for s in sources} - {None})
    if len(folds) > 1:
        words.append("-m")
    words += [o for o in typed if _key(o) not in REPLACED and not _key(o).startswith("hydra.")]
    words.append(f"data.root={Path(data_root or cfg['data']['root']).resolve()}")
    if folds:
        words.append(f"data.fold={','.join(map(str, folds))}")
    words.append(extra_train_override(pseudo_file, image_root))
    if len(folds) > 1 and len(sweeps) == 1:
        words.append(f"hydra.sweep.dir={next_sweep_dir(Path(sweeps[0]))}")
    return shlex.join(words)
