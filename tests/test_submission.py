"""Submission CSVs: parse back exactly, 512 -> 256 nearest, atomic writes, check, vote."""

import json

import numpy as np
import pandas as pd
import pytest

from trashseg.submission import SubmissionWriter, encode_row, read_submission, to_submission_size
from trashseg.submission.__main__ import main as cli
from trashseg.submission.check import check_submission
from trashseg.submission.vote import vote


def test_512_to_256_is_every_second_pixel():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 11, (512, 512), dtype=np.uint8)
    np.testing.assert_array_equal(to_submission_size(mask), mask[::2, ::2])


def test_row_encoding_equals_the_plain_join():
    mask = np.random.default_rng(1).integers(0, 11, (256, 256))
    assert encode_row(mask) == " ".join(str(v) for v in mask.ravel())


@pytest.fixture
def masks():
    rng = np.random.default_rng(2)
    return {f"batch_0{i % 3 + 1}_vt/{i:04d}.jpg": rng.integers(0, 11, (256, 256), dtype=np.uint8) for i in range(5)}


def write(path, masks):
    with SubmissionWriter(path) as writer:
        for image_id, m in masks.items():
            writer.write(image_id, m)
    return path


def test_csv_parses_back_to_the_masks(tmp_path, masks):
    path = write(tmp_path / "sub.csv", masks)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["image_id", "PredictionString"] and list(frame["image_id"]) == list(masks)
    for (image_id, m), row in zip(masks.items(), frame["PredictionString"]):
        np.testing.assert_array_equal(np.array(row.split(), dtype=int).reshape(256, 256), m)
    assert [i for i, _ in read_submission(path)] == list(masks)


def test_failed_write_leaves_no_file(tmp_path, masks):
    with pytest.raises(ValueError, match="written twice"):
        with SubmissionWriter(tmp_path / "sub.csv") as writer:
            first = next(iter(masks))
            writer.write(first, masks[first])
            writer.write(first, masks[first])
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def valid(tmp_path, masks):
    test_json = tmp_path / "test.json"
    test_json.write_text(json.dumps({"images": [{"id": i, "file_name": n} for i, n in enumerate(masks)]}))
    return write(tmp_path / "sub.csv", masks), test_json


def rewrite(path, lines):
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("breakage, message", [
    (lambda lines: lines[:3] + lines[4:], "5 rows... "),
    (lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], "out of order"),
    (lambda lines: lines[:2] + [lines[2].rsplit(" ", 1)[0]] + lines[3:], "65535 labels, expected 65536"),
    (lambda lines: lines[:2] + [lines[2].rsplit(" ", 1)[0] + " 11"] + lines[3:], "labels ['11'] outside 0..10"),
    (lambda lines: ["image_id,prediction"] + lines[1:], "bad header"),
    (lambda lines: lines[:2] + [lines[2].rsplit(" ", 1)[0] + " \u0663"] + lines[3:], "labels ['\u0663'] outside 0..10"),
    (lambda lines: lines[:2] + [lines[2].rsplit(" ", 1)[0] + " \u00b2"] + lines[3:], "labels ['\u00b2'] outside 0..10"),
])
def test_check_rejects_each_broken_variant(valid, breakage, message, capsys):
    path, test_json = valid
    assert check_submission(path, test_json) == []
    lines = path.read_text().splitlines()
    rewrite(path, breakage(lines))
    faults = check_submission(path, test_json)
    expected = "4 rows, test.json has 5 images" if message == "5 rows... " else message
    assert any(expected in f for f in faults), faults
    assert cli(["check", str(path), "--test-json", str(test_json)]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_vote_identical_and_majority(tmp_path, masks):
    a = write(tmp_path / "a.csv", masks)
    b = write(tmp_path / "b.csv", masks)
    vote([a, b], None, tmp_path / "same.csv")
    assert (tmp_path / "same.csv").read_bytes() == a.read_bytes()
    other = {k: (m + 1) % 11 for k, m in masks.items()}
    c = write(tmp_path / "c.csv", other)
    vote([c, a, b], None, tmp_path / "majority.csv")  # two of three say `masks`
    assert (tmp_path / "majority.csv").read_bytes() == a.read_bytes()
    vote([c, a], [1, 1], tmp_path / "tie.csv")  # a tie goes to the earlier CSV
    assert (tmp_path / "tie.csv").read_bytes() == c.read_bytes()
    vote([c, a], [1, 3], tmp_path / "heavier.csv")
    assert (tmp_path / "heavier.csv").read_bytes() == a.read_bytes()


@pytest.mark.parametrize("label", [256, 100, -1])
def test_labels_outside_0_99_are_refused_before_the_uint8_cast(label):
    mask = np.zeros((256, 256), np.int64)
    mask[3, 4] = label  # 256 would wrap to 0, -1 to 255
    with pytest.raises(ValueError, match=f"label {label} is outside 0..99"):
        encode_row(mask)


def test_check_with_a_missing_test_json_is_one_line(valid, tmp_path, capsys):
    path, _ = valid
    assert cli(["check", str(path), "--test-json", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test JSON not found" in err
