"""What a new user met following the docs (issue 27), each now checked: a wrong data root stops
instead of filling itself with fake data, readers say when a file is synthetic, `resume=auto`
continues the run meant (and keeps its log in it), setup errors leave neither traceback nor run
folder, the pseudo-labeller's printed next round runs as printed, and a run or sweep ends saying
where it is and how it did."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from trashseg.data.check import main as check_data
from trashseg.data.datamodule import TrashDataModule
from trashseg.data.kfold import main as kfold
from trashseg.data.synthetic import is_synthetic
from trashseg.inference.command import output_name
from trashseg.inference.pseudo import main as pseudo
from trashseg.run_layout import sweep_jobs
from trashseg.submission import SubmissionWriter
from trashseg.submission.__main__ import main as submission
from trashseg.training.run_config import check_accelerator, plain_config
from trashseg.training.resuming.target import find_resume_checkpoint
from trashseg.training.launching.sweeps import summary_lines

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.num_workers=0", "data.batch_size=4", "data.val_batch_size=5", "logger=csv",
        "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0", "model.encoder_depth=3",
        "model.decoder.decoder_channels=[16,8,8]"]


def train_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))


def the_error(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a failed start (and no traceback)."""
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


# ---------------------------------------------------------------- data where it was asked for

def test_a_mistyped_data_root_stops_in_one_line_and_writes_nothing(tmp_path):
    """It used to generate the synthetic dataset into data/typo_recycle and train on it, exit 0."""
    line = the_error(train_py("experiment=quickstart", "data.root=data/typo_recycle", cwd=tmp_path))
    missing = tmp_path.resolve() / "data" / "typo_recycle" / "train.json"
    assert f"annotation file not found: {missing}" in line and "point data.root at" in line
    assert list(tmp_path.iterdir()) == []  # no data written, no run folder (nor runs/quickstart/)


def test_the_synthetic_dataset_is_generated_only_where_it_was_asked_for(tmp_path):
    settings = {"n_train": 4, "n_val": 2, "n_test": 2, "size": 32, "seed": 0, "root": str(tmp_path / "synthetic")}
    elsewhere = TrashDataModule(tmp_path / "recycle", synthetic=settings, num_workers=0)
    assert not elsewhere.generates_synthetic
    with pytest.raises(FileNotFoundError, match=r"recycle/train\.json .* generated only into .*synthetic"):
        elsewhere.check_annotation_files()
    own = TrashDataModule(tmp_path / "synthetic", synthetic=settings, num_workers=0)
    own.check_annotation_files()  # about to be generated: no error
    own.prepare_data()
    assert is_synthetic(json.loads((tmp_path / "synthetic" / "train.json").read_text()))
    assert not (tmp_path / "recycle").exists()


def test_readers_say_in_one_line_when_a_file_is_synthetic(synthetic_root, tmp_path, capsys):
    assert check_data(["--root", str(tmp_path / "recycle"), "--ann", "train.json"]) == 1  # the walk's first check
    assert capsys.readouterr().err.strip() == (f"error: annotation file not found: {tmp_path / 'recycle' / 'train.json'} "
                                               f"(--root {tmp_path / 'recycle'}: the folder does not exist); give the "
                                               "folder holding the dataset's JSON files as --root and the file as --ann")
    assert check_data(["--root", str(synthetic_root), "--ann", "val.json"]) == 0
    assert sum("synthetic dataset" in line for line in capsys.readouterr().out.splitlines()) == 1
    test = json.loads((synthetic_root / "test.json").read_text())
    csv = tmp_path / "s.csv"
    with SubmissionWriter(csv, 256) as writer:
        for image in test["images"]:
            writer.write(image["file_name"], np.zeros((image["height"], image["width"]), np.uint8))
    assert submission(["check", str(csv), "--test-json", str(synthetic_root / "test.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("OK") and sum("synthetic dataset" in line for line in out) == 1
    real = tmp_path / "test.json"  # the same images without the generator's info: no note
    real.write_text(json.dumps({k: v for k, v in test.items() if k != "info"}))
    assert submission(["check", str(csv), "--test-json", str(real)]) == 0
    assert "synthetic" not in capsys.readouterr().out


# ---------------------------------------------------------------- a run: its end, its resume, its data

def test_asked_for_synthetic_data_a_stop_before_validation_and_its_resume(tmp_path):
    """data=synthetic typed with another data.root generates there; a max_steps stop before any
    validation says so; resume=auto continues that run, applies limit_train_batches (a length key,
    once refused) and logs into the run's own train.log instead of a stray new folder."""
    mine = tmp_path / "mine"
    command = ["experiment=quickstart", "data=synthetic", f"data.root={mine}", "data.synthetic.n_train=12",
               "data.synthetic.n_val=4", "data.synthetic.n_test=2", "data.synthetic.size=32", *TINY]
    first = train_py(*command, "trainer.max_steps=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert is_synthetic(json.loads((mine / "train.json").read_text()))
    (run,) = (tmp_path / "runs" / "quickstart").iterdir()
    assert f"generated trashseg's synthetic dataset (shapes, not competition data) into {mine}" in first.stdout
    assert f"run folder: runs/quickstart/{run.name}" in first.stdout
    assert "before its first validation" in first.stdout and "no best.ckpt" in first.stdout
    assert not (run / "checkpoints" / "best.ckpt").exists() and (run / "checkpoints" / "last.ckpt").is_file()

    second = train_py(*command, "trainer.max_steps=4", "trainer.limit_train_batches=2", "resume=auto", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert [p.name for p in (tmp_path / "runs" / "quickstart").iterdir()] == [run.name]  # no stray folder
    (changed,) = yaml.safe_load((run / "resumes.yaml").read_text())
    assert changed["changed"]["trainer.limit_train_batches"] == {"was": None, "now": 2}
    log = (run / "train.log").read_text()
    assert "resume applies" in log and f"note: {mine / 'train.json'} is trashseg's synthetic dataset" in log
    assert "best val/mIoU" in second.stdout and f"--checkpoint runs/quickstart/{run.name}/checkpoints/best.ckpt" in second.stdout
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a GPU")
def test_a_gpu_recipe_on_a_cpu_machine_is_one_line_naming_trainer_cpu(tmp_path):
    line = the_error(train_py("experiment=competition/fcn8s_vgg16", "model.pretrained=null", cwd=tmp_path))
    assert "trainer.accelerator=gpu" in line and "add trainer=cpu" in line
    assert list(tmp_path.iterdir()) == []  # no run folder
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):  # the fix it names passes
        cfg = compose(config_name="train", overrides=["experiment=competition/fcn8s_vgg16", "trainer=cpu"])
    check_accelerator(plain_config(cfg)["trainer"])


# ---------------------------------------------------------------- which run resume=auto continues

def fake_run(folder: Path, config: dict, age: int) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    ckpt = folder / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (1_000_000 + age, 1_000_000 + age))
    return ckpt


def test_resume_auto_continues_the_named_folder_else_the_newest_matching_run(tmp_path):
    runs = tmp_path / "runs"
    typed = {"experiment_name": "quickstart", "optimizer": {"lr": 3e-3}, "distill": None, "trainer": {"max_epochs": 12}}
    named = fake_run(runs / "quickstart" / "named", typed, age=1)
    matching = fake_run(runs / "quickstart" / "matching", {**typed, "trainer": {"max_epochs": 4}}, age=2)
    fake_run(runs / "quickstart" / "distilled", {**typed, "distill": {"alpha": 0.5}}, age=3)  # the newest
    assert find_resume_checkpoint("auto", runs, "quickstart", runs / "quickstart" / "named", typed) == named
    fresh = runs / "quickstart" / "fresh"
    assert find_resume_checkpoint("auto", runs, "quickstart", fresh, typed) == matching  # max_epochs: a length key
    with pytest.raises(ValueError) as none:
        find_resume_checkpoint("auto", runs, "quickstart", fresh, {**typed, "optimizer": {"lr": 1e-3}})
    message = str(none.value)
    assert "\n" not in message and "no run of 'quickstart'" in message
    # each candidate named, newest first, with what differs from this command
    assert "distilled (distill.alpha (0.5 -> None), optimizer.lr (0.003 -> 0.001))" in message
    assert "matching (optimizer.lr (0.003 -> 0.001))" in message


# ---------------------------------------------------------------- the next step a tool prints

def test_the_pseudo_labellers_next_round_runs_as_printed(synthetic_root, tmp_path):
    """It printed a GPU / ImageNet / data/recycle recipe whatever made the labels; a synthetic fold
    sweep could not run it. The round-2 runs record the pseudo file among their training files."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    assert kfold(["--root", str(data), "--ann", "train_all.json", "--folds", "2", "--seed", "0",
                  "--out", str(data / "folds")]) == 0
    sweep = tmp_path / "folds" / "quickstart"
    first = train_py("-m", "experiment=quickstart", f"data.root={data}", "data.fold=0,1", *TINY, "trainer.max_epochs=1",
                     f"runs_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={sweep}", cwd=REPO)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"sweep folder: {sweep} (2 jobs)" in first.stdout  # the sweep ends with its folder and jobs
    assert "| 0 | data.fold=0 |" in first.stdout and "| 1 | data.fold=1 |" in first.stdout
    assert f"python -m trashseg.inference.oof {sweep}" in first.stdout

    out = data / "pseudo" / "test_pseudo.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert pseudo(["--checkpoints-from", str(sweep), "--split", "test", "--out", str(out), "--num-workers", "0",
                       "--min-confidence", "0.5"]) == 0
    words = shlex.split(printed.getvalue().split("Train on it with: ", 1)[1])
    assert words[:3] == ["python", "train.py", "-m"] and "experiment=quickstart" in words
    assert {f"data.root={data.resolve()}", "data.fold=0,1", f"hydra.sweep.dir={sweep}_round2"} <= set(words)
    second = subprocess.run([sys.executable, *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert second.returncode == 0, second.stderr[-2000:]
    pseudo_images = len(json.loads(out.read_text())["images"])
    for fold in (0, 1):
        run = Path(f"{sweep}_round2") / str(fold)
        record = yaml.safe_load((run / "config.yaml").read_text())["fold_record"]
        (extra,) = record["extra_train"]
        assert Path(extra["file"]) == out.resolve() and extra["images"] == pseudo_images
        # one epoch over both sources: (fold's train images + pseudo images) // batch 4 (drop_last)
        last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        assert last["global_step"] == (record["train"]["images"] + pseudo_images) // 4


# ---------------------------------------------------------------- where outputs go

def test_a_sweep_table_shows_each_job_and_a_failed_one(tmp_path):
    sweep = tmp_path / "sweep"
    for job, lr, scores in (("0", "1e-3", [0.2, 0.5, 0.4]), ("1", "3e-4", [0.6]), ("2", "1e-4", None)):
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment=quickstart", f"optimizer.lr={lr}"]))
        if scores:
            (sweep / job / "checkpoints").mkdir()
            (sweep / job / "checkpoints" / "best.ckpt").write_bytes(b"x")
            rows = "\n".join(f"{epoch},{score}" for epoch, score in enumerate(scores))
            (sweep / job / "metrics.csv").write_text(f"epoch,val/mIoU\n{rows}\n")
    lines = summary_lines(sweep, sweep_jobs(sweep), ["optimizer.lr"])
    assert lines[0] == f"sweep folder: {sweep} (3 jobs)"
    assert f"| 0 | optimizer.lr=1e-3 | 0.5000 | 1 | {sweep / '0'} |" in lines
    assert f"| 2 | optimizer.lr=1e-4 | failed | - | {sweep / '2'} |" in lines
    assert lines[-1] == f"score the best job: python inference.py --checkpoint {sweep / '1' / 'checkpoints' / 'best.ckpt'} --split val"


def test_default_inference_outputs_are_named_after_the_run():
    """A sweep job's folder is its number: `0_val.json` said nothing of where it came from."""
    cfg = {"experiment_name": "quickstart"}
    job = SimpleNamespace(path=Path("runs/multirun/quickstart/2026-12-04_10-00-00/0/checkpoints/best.ckpt"), cfg=cfg)
    run = SimpleNamespace(path=Path("runs/quickstart/2026-12-04_10-00-00/checkpoints/best.ckpt"), cfg=cfg)
    fold = SimpleNamespace(path=Path("runs/folds/quickstart/3/checkpoints/best.ckpt"), cfg=cfg)
    exported = SimpleNamespace(path=Path("models/a_int8.onnx"), cfg=cfg, run_name="a_int8")
    assert output_name(job) == "quickstart_2026-12-04_10-00-00_0"
    assert output_name(run) == "quickstart_2026-12-04_10-00-00"
    assert output_name(fold) == "quickstart_3"
    assert output_name(exported) == "a_int8"


def test_what_the_tools_write_is_ignored_by_git(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["models/a_int8.onnx", "probs/A/0.npy", "reports/eda/report.md", "submissions/quickstart_0_val.json",
             "submissions/folds.csv", "runs/quickstart/x/metrics.csv", "data/synthetic/train.json"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.split() == paths


def test_int8_export_prints_no_shape_inference_noise(tmp_path, caplog):
    """onnxruntime's symbolic shape inference logged "Unable to determine if height <= Pad_52_o0__d2,
    treat as equal" for each padded dimension of a dynamic-size graph."""
    pytest.importorskip("onnxruntime")
    from trashseg.models.registry import build_model
    from trashseg.tools.export_graph import ExportGraph, export_onnx_file
    from trashseg.tools.quantize import quantize_int8

    model_cfg = {**yaml.safe_load((REPO / "configs" / "model" / "unet_tiny.yaml").read_text()), "encoder_depth": 3,
                 "decoder": {"decoder_channels": [16, 8, 8]}}
    graph = ExportGraph(build_model(model_cfg, 11), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    image = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    export_onnx_file(graph, image, tmp_path / "fp32.onnx", dynamic_size=True)
    with caplog.at_level("WARNING"):
        quantize_int8(tmp_path / "fp32.onnx", [image], {}, tmp_path / "int8.onnx")
    assert (tmp_path / "int8.onnx").is_file()
    assert not [r for r in caplog.records if "Unable to determine" in r.getMessage()]
