"""python -m trashseg.submission check FILE.csv --test-json test.json
python -m trashseg.submission vote A.csv B.csv ... [--weights 2 1 ...] --out C.csv"""

import argparse
import sys
from pathlib import Path

from trashseg.errors import run_or_report

from . import check
from .vote import vote


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trashseg.submission", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a CSV against test.json")
    c.add_argument("file", type=Path)
    c.add_argument("--test-json", type=Path, required=True)
    c.add_argument("--num-classes", type=int, default=11)
    c.add_argument("--size", type=int, default=256)
    v = sub.add_parser("vote", help="pixel-wise weighted hard voting")
    v.add_argument("csvs", nargs="+", type=Path)
    v.add_argument("--weights", nargs="+", type=float)
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--num-classes", type=int, default=11)
    args = parser.parse_args(argv)
    if args.command == "check":
        return check.main(args)
    return run_or_report(lambda: vote(args.csvs, args.weights, args.out, args.num_classes) or f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
