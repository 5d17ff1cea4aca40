"""SIGKILL while inference.py writes a submission CSV and saved probabilities: the earlier files
stay as they were, and the next run replaces them whole (no mix of old and new, no temp file)."""

import json

import numpy as np
import pytest

from faultlib import explain, killed, run_script, temp_files
from trashseg.inference.probs_store import read_index


@pytest.fixture
def checkpoint(one_epoch):
    return one_epoch / "checkpoints" / "last.ckpt"


def files(folder):
    """Name -> bytes of the files in `folder`, temporary ones aside."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and ".tmp-" not in p.name}


@pytest.mark.slow
def test_kill_while_writing_probabilities_and_csv(checkpoint, tmp_path):
    args = ["--checkpoint", str(checkpoint), "--split", "test", "--num-workers", "0", "--batch-size", "2"]
    done = run_script("inference.py", *args, "--out", str(tmp_path / "a.csv"), "--save-probs", str(tmp_path / "A"))
    assert done.returncode == 0, explain(done)
    assert len(read_index(tmp_path / "A")["images"]) == 6

    out, probs = tmp_path / "out" / "b.csv", tmp_path / "out" / "B"  # an earlier run's outputs
    probs.mkdir(parents=True)
    np.save(probs / "999.npy", np.zeros((11, 4, 4), np.float16))
    (probs / "index.json").write_text(json.dumps({"classes": [], "sources": [], "images": [{"id": 999, "file_name": "x"}]}))
    out.write_text("image_id,PredictionString\n")
    earlier = files(out.parent) | files(probs)

    result = run_script("inference.py", *args, "--out", str(out), "--save-probs", str(probs), fault="npsave:3")
    assert killed(result), explain(result)
    assert files(out.parent) | files(probs) == earlier  # untouched...
    assert sorted(p.name.split(".tmp-")[0] for p in temp_files(out.parent)) == [".B", ".b.csv"]  # ...while both were being written

    result = run_script("inference.py", *args, "--out", str(out), "--save-probs", str(probs))
    assert result.returncode == 0, explain(result)
    assert out.read_bytes() == (tmp_path / "a.csv").read_bytes()
    assert files(probs) == files(tmp_path / "A")  # the earlier folder replaced whole: 999.npy is gone
    assert temp_files(tmp_path) == []
