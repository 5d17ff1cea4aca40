"""One inference run split across processes (one per GPU), then merged into one probabilities folder.

    python inference.py ... --split test --device cuda:0 --shard 0/2 --save-probs probs/part0 &
    python inference.py ... --split test --device cuda:1 --shard 1/2 --save-probs probs/part1 &
    wait
    python -m trashseg.inference.shards probs/part0 probs/part1 --out probs/all
    python -m trashseg.inference.ensemble --probs probs/all --out submissions/ens.csv

Shard i of n holds images i, i+n, i+2n, ... of the split in file order, each predicted by the whole
ensemble and TTA; merging interleaves them back into that order. Each shard records what made it
(`made_by`: models by content, weights, TTA, scales, resize, post, split, data root, annotation
file by content) and stores float32 probabilities; the merge refuses shards that differ in any of
these, and the ensemble applies the recorded `--post`, so the CSV is the one a single process
writes with the same batch size (other batch sizes may flip near-tie pixels, as anywhere).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trashseg.errors import run_or_report

from .probs_store import ProbsWriter, read_index


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` with 0 <= i < n, for argparse."""
    try:
        index, count = (int(p) for p in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n (e.g. 0/4), not {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: i must be 0..{count - 1} for n={count}")
    return index, count


def shard_positions(length: int, shard: tuple[int, int]) -> range:
    index, count = shard
    return range(index, length, count)


# What a shard records (options.settings_record) that must be the same in every shard of one run,
# and how a refusal names it. The model paths are not compared: a model is its file's content.
SETTINGS = {"models": "models (file contents and --weights)", "tta": "--tta", "scales": "--scales", "resize": "--resize",
            "post": "--post", "split": "--split", "data_root": "data root (--data-root)",
            "annotation_sha256": "annotation file (--ann, by content)"}


def _shown(key: str, value) -> str:
    if key == "models":
        return ", ".join(f"{m['sha256'][:12]} x{m['weight']:.3g}" for m in value)
    return value[:12] if key == "annotation_sha256" else str(value)


def check_same_settings(folders: list[Path], indexes: list[dict]) -> None:
    """One line naming the first setting in which a shard differs from the first shard."""
    for folder, index in zip(folders, indexes):
        if "made_by" not in index:
            raise ValueError(f"{folder} records no settings (a shard written before shards recorded what made them); "
                             "run its inference.py --shard command again")
    first = indexes[0]
    for folder, index in zip(folders[1:], indexes[1:]):
        if index["classes"] != first["classes"]:
            raise ValueError(f"{folder} has classes {index['classes']} but {folders[0]} has {first['classes']}; merge the "
                             "shards of one inference command")
        for key, name in SETTINGS.items():
            mine, theirs = index["made_by"][key], first["made_by"][key]
            if mine != theirs:
                raise ValueError(f"{folder} was made with other {name} than {folders[0]} ({_shown(key, mine)} vs "
                                 f"{_shown(key, theirs)}); merge the shards of one inference command, or run this "
                                 "shard again with the others' settings")


def merge(folders: list[Path], out: Path) -> str:
    """One probabilities folder from the shards 0..n-1 of one run, in the split's order."""
    indexes = [read_index(f) for f in folders]
    shards = [index.get("shard") for index in indexes]
    if None in shards:
        raise ValueError(f"{folders[shards.index(None)]} is not a shard (written without --shard); merge takes the "
                         "--save-probs folders of one run's --shard i/n parts")
    check_same_settings(folders, indexes)
    count, total = shards[0]["count"], shards[0]["total"]
    found = sorted(s["index"] for s in shards)
    if found != list(range(count)) or any((s["count"], s["total"]) != (count, total) for s in shards):
        missing = sorted(set(range(count)) - set(found))
        twice = sorted({i for i in found if found.count(i) > 1})
        why = [f"shard(s) {twice} given twice"] * bool(twice) + [f"shard(s) {missing} missing"] * bool(missing)
        raise ValueError(f"the folders hold shards {found} of {count}: {'; '.join(why) or 'they come from other splits'}; "
                         "give each of 0..n-1 once")
    first = indexes[0]
    by_index = {s["index"]: (folder, index) for s, folder, index in zip(shards, folders, indexes)}
    with ProbsWriter(out, first["classes"], first["sources"], made_by=first["made_by"]) as writer:
        for position in range(total):
            folder, index = by_index[position % count]
            image = index["images"][position // count]
            writer.adopt(image["id"], image["file_name"], folder / f"{image['id']}.npy")
    post = first["made_by"]["post"]
    applied = f" (it applies the shards' --post {post})" if post != "none" else ""
    return f"wrote {out} ({total} images from {count} shards); make the CSV with: python -m trashseg.inference.ensemble " \
           f"--probs {out} --out submissions/<name>.csv{applied}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Merge the --save-probs folders of one inference run's --shard parts.")
    parser.add_argument("shards", nargs="+", type=Path, help="the --save-probs folders of shards 0..n-1")
    parser.add_argument("--out", type=Path, required=True, help="the merged probabilities folder")
    args = parser.parse_args(argv)
    return run_or_report(lambda: merge(args.shards, args.out))


if __name__ == "__main__":
    sys.exit(main())
