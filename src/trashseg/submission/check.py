"""Check a submission CSV against test.json before spending one of the day's uploads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from trashseg.data.synthetic import is_synthetic, synthetic_note
from trashseg.errors import USER_ERRORS, report

from .csv_format import HEADER, SUBMISSION_SIZE

MAX_FAULTS_SHOWN = 10


def read_test_json(test_json: str | Path) -> dict:
    """The parsed test.json, with its image list checked."""
    path = Path(test_json)
    if not path.is_file():
        raise FileNotFoundError(f"test JSON not found: {path} (--test-json takes the competition's test.json)")
    try:
        coco = json.loads(path.read_bytes())
        [im["file_name"] for im in coco["images"]]  # every image names its file
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not a COCO test.json with an 'images' list ({type(err).__name__}: {err})") from None
    return coco


def read_test_ids(test_json: str | Path) -> list[str]:
    return [im["file_name"] for im in read_test_json(test_json)["images"]]


def check_submission(csv_path: str | Path, test_json: str | Path, num_classes: int = 11,
                     size: int = SUBMISSION_SIZE) -> list[str]:
    """One line per fault; empty when the file is valid."""
    expected = read_test_ids(test_json)
    if not Path(csv_path).is_file():
        raise FileNotFoundError(f"submission not found: {csv_path}")
    try:
        return _faults(csv_path, expected, num_classes, size)
    except UnicodeDecodeError as err:
        return [f"not a text CSV: byte {err.start} is not UTF-8"]


def _faults(csv_path: str | Path, expected: list[str], num_classes: int, size: int) -> list[str]:
    tokens = size * size
    faults: list[str] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n")
        if header != HEADER:
            return [f"bad header {header[:60]!r}; expected {HEADER!r}"]
        rows = 0
        for line_no, row in enumerate(csv.reader(f), start=2):
            rows += 1
            if len(row) != 2:
                faults.append(f"line {line_no}: {len(row)} fields, expected 2")
                continue
            image_id, prediction = row
            if rows <= len(expected) and image_id != expected[rows - 1]:
                where = "not in test.json" if image_id not in expected else f"out of order (test.json has it at row {expected.index(image_id) + 1})"
                faults.append(f"line {line_no}: image_id {image_id!r} {where}; expected {expected[rows - 1]!r}")
            values = prediction.split()
            if len(values) != tokens:
                faults.append(f"line {line_no}: {len(values)} labels, expected {tokens} ({size}x{size})")
            # isdigit() alone also accepts digits of other scripts ('٣') and superscripts ('²')
            bad = [v for v in set(values) if not (v.isascii() and v.isdigit()) or int(v) >= num_classes]
            if bad:
                faults.append(f"line {line_no}: labels {sorted(bad)[:5]} outside 0..{num_classes - 1}")
    if rows != len(expected):
        faults.append(f"{rows} rows, test.json has {len(expected)} images")
    return faults


def main(args) -> int:
    try:
        faults = check_submission(args.file, args.test_json, args.num_classes, args.size)
    except USER_ERRORS as err:
        report(err)
        return 1
    for fault in faults[:MAX_FAULTS_SHOWN]:
        print(f"  {fault}")
    if len(faults) > MAX_FAULTS_SHOWN:
        print(f"  ... and {len(faults) - MAX_FAULTS_SHOWN} more")
    if is_synthetic(read_test_json(args.test_json)):  # a valid file, but not for the leaderboard
        print(synthetic_note(args.test_json))
    print(f"INVALID: {args.file}: {len(faults)} faults" if faults else f"OK: {args.file} is a valid submission")
    return 1 if faults else 0
