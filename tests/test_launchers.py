"""Sweeps on several processes: Hydra's submitit launcher runs a fold sweep's jobs side by side (and
DDP inside a job on its own tasks), the basic launcher refuses DDP jobs in one line, an Optuna search
composes with both, and W&B names a sweep's runs by what the sweep varies."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from small_runs import TINY, explain, run_train, with_folds
from trashseg.inference.oof import main as oof
from trashseg.tools.compare import main as compare
from trashseg.training.launching.jobs import Job, LaunchError, check_job, gpu_slot, place_job
from trashseg.training.config_keys import check_overrides
from trashseg.training.launching.sweeps import job_name, sweep_identity, swept_keys

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def pool(synthetic_root, tmp_path_factory) -> Path:
    return with_folds(synthetic_root, tmp_path_factory, 3)


def log_span(log: Path) -> tuple[datetime, datetime]:
    """First and last time stamp of a Hydra job log (`[2026-12-04 05:25:37,603][...]`)."""
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]", log.read_text(), re.M)
    parse = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in stamps]
    return min(parse), max(parse)


# ---------------------------------------------------------------- the config check knows Hydra's groups

def test_hydras_own_groups_and_keys_pass_the_override_check():
    assert check_overrides(["-m", "experiment=quickstart", "hydra/launcher=submitit_local",
                            "hydra.launcher.tasks_per_node=2", "data.fold=0,1"], CONFIGS) is None
    assert check_overrides(["experiment=quickstart", "hparams_search=quickstart_optuna",
                            "hydra.sweeper.n_trials=3"], CONFIGS) is None
    # ours are still checked
    assert "did you mean optimizer.lr" in check_overrides(["hydra/launcher=submitit_local", "optimizer.lrr=1"], CONFIGS)


# ---------------------------------------------------------------- which launcher may run which job

DDP2 = {"strategy": "ddp", "devices": 2, "accelerator": "cpu", "num_nodes": 1}


def test_a_ddp_sweep_under_the_basic_launcher_is_one_line_naming_submitit():
    with pytest.raises(LaunchError, match=r"hydra/launcher=submitit_local hydra.launcher.tasks_per_node=2") as err:
        check_job(DDP2, Job(multirun=True, launcher="basic", job_num=0), gpus_visible=0)
    assert "\n" not in str(err.value)
    check_job(DDP2, Job(multirun=False, launcher="basic", job_num=0), gpus_visible=0)  # a single DDP run: fine
    check_job({**DDP2, "strategy": "ddp_spawn"}, Job(True, "basic", 0), 0)  # spawn does not re-run argv
    check_job({**DDP2, "devices": 1}, Job(True, "basic", 0), 0)  # one process: nothing to re-run


def test_a_submitit_job_needs_one_task_per_ddp_process():
    check_job(DDP2, Job(True, "submitit_local", 0, tasks=2, cluster="local"), 0)
    with pytest.raises(LaunchError, match=r"has 1 task\(s\) but the trainer runs 2 .*hydra.launcher.tasks_per_node=2"):
        check_job(DDP2, Job(True, "submitit_local", 0, tasks=1, cluster="local"), 0)
    with pytest.raises(LaunchError, match=r"tasks_per_node=4 hydra.launcher.nodes=2"):
        check_job({**DDP2, "devices": 4, "num_nodes": 2}, Job(True, "submitit_slurm", 0, tasks=4, cluster="slurm"), 0)
    with pytest.raises(LaunchError, match="trainer runs 1 process"):  # tasks without DDP would train twice
        check_job({"strategy": "auto", "devices": 1}, Job(True, "submitit_local", 0, tasks=2, cluster="local"), 0)


def test_local_jobs_side_by_side_each_get_their_own_gpus():
    assert [gpu_slot(k, 1, 4) for k in range(5)] == [[0], [1], [2], [3], [0]]
    assert [gpu_slot(k, 2, 4) for k in range(3)] == [[0, 1], [2, 3], [0, 1]]
    gpu = {"accelerator": "gpu", "strategy": "auto", "devices": 1}
    job = Job(True, "submitit_local", 2, tasks=1, cluster="local")
    four, eight = ["0", "1", "2", "3"], [str(k) for k in range(8)]
    basic = {"max_batch_size": 4}
    assert place_job(gpu, job, job_gpus=four, allotment=four, sweeper=basic)["devices"] == [2]
    with pytest.raises(LaunchError, match=r"set hydra.sweeper.max_batch_size=4"):
        place_job(gpu, job, four, four, {"max_batch_size": None})  # 5 folds at once on 4 GPUs would share one
    with pytest.raises(LaunchError, match=r"hydra.launcher.gpus_per_node=8"):
        place_job(gpu, job, ["0"], eight, basic)  # submitit shows GPU 0 alone to every job
    cpu = {"accelerator": "cpu", "strategy": "auto", "devices": 1}
    assert place_job(cpu, job, [], [], {"max_batch_size": None}) == {}  # runs as its config says
    with pytest.raises(LaunchError, match="needs 8 GPU"):
        gpu_slot(0, 8, 4)


# ---------------------------------------------------------------- W&B names

def test_a_sweeps_runs_are_named_by_what_the_sweep_varies():
    keys = swept_keys({"optimizer.lr": "interval(1e-4, 1e-2)"}, ["experiment=quickstart", "data.fold=0,1,2",
                                                                "+trainer.max_time=00:00:01:00"])
    assert keys == ["optimizer.lr", "data.fold"]
    assert job_name(keys, ["experiment=quickstart", "data.fold=2", "optimizer.lr=0.0003"]) == \
        "optimizer.lr=0.0003 data.fold=2"
    assert job_name(keys, ["experiment=quickstart"]) is None


def test_sweep_identity_reads_the_typed_sweep_from_the_sweep_folder(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=quickstart", "data.fold=1", f"hydra.sweep.dir={tmp_path}"],
                      return_hydra_config=True)
    (tmp_path / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - experiment=quickstart\n"
                                            "    - data.fold=0,1,2\n")
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.job.num = 1
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        assert sweep_identity() == (str(tmp_path), "data.fold=1")
    finally:
        HydraConfig.instance().cfg = saved


# ---------------------------------------------------------------- end to end on CPU

@pytest.mark.slow
def test_a_fold_sweep_runs_side_by_side_under_submitit_local_and_oof_reads_it(pool, tmp_path):
    sweep = tmp_path / "folds"
    result = run_train("-m", *TINY, f"data.root={pool}", "data.fold=0,1,2", "hydra/launcher=submitit_local",
                       "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}", f"runs_dir={tmp_path / 'runs'}")
    assert result.returncode == 0, explain(result)
    assert sorted(p.name for p in sweep.iterdir() if p.name[0].isdigit()) == ["0", "1", "2"]
    for fold in range(3):
        assert (sweep / str(fold) / "checkpoints" / "best.ckpt").is_file()
    spans = [log_span(sweep / str(fold) / "train.log") for fold in range(3)]
    assert max(start for start, _ in spans) < min(end for _, end in spans), f"the jobs ran one after another: {spans}"
    assert oof([str(sweep), "--num-workers", "0", "--out", str(tmp_path / "oof")]) == 0
    assert "CV mIoU" in (tmp_path / "oof" / "oof.md").read_text()


@pytest.mark.slow
def test_ddp_in_a_fold_sweep_refused_under_basic_and_one_run_folder_per_fold_under_submitit(pool, tmp_path):
    args = [*TINY, f"data.root={pool}", "data.fold=0,1", "trainer=ddp_cpu", "trainer.devices=2",
            f"runs_dir={tmp_path / 'runs'}"]
    refused = run_train("-m", *args, f"hydra.sweep.dir={tmp_path / 'basic'}")
    assert refused.returncode != 0
    lines = [l for l in refused.stderr.splitlines() if "error" in l.lower()]
    assert len(lines) == 1 and "hydra/launcher=submitit_local hydra.launcher.tasks_per_node=2" in lines[0], \
        explain(refused)
    assert not any((tmp_path / "basic").glob("*/checkpoints"))

    sweep = tmp_path / "ddp"
    result = run_train("-m", *args, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                       "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, explain(result)
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".") and p.is_dir()) == ["0", "1"]
    assert not (REPO / "outputs").exists() and not any((tmp_path / "runs").glob("**/*.ckpt"))
    for fold in ("0", "1"):
        assert sorted(p.name for p in (sweep / fold / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
        # both tasks trained: 2 ranks x 2 batches of the fold's train images; the metrics show one run
        val = pd.read_csv(sweep / fold / "metrics.csv").dropna(subset=["val/mIoU"])
        assert len(val) == 1
    logs = "\n".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    assert logs.count("MEMBER: 2/2") == 2, logs[-3000:]  # rank 1 of each fold's job, once per fold


@pytest.mark.slow
def test_an_optuna_search_prints_its_best_trial_and_compare_reads_the_sweep(synthetic_root, tmp_path):
    sweep = tmp_path / "search"
    result = run_train(*TINY, f"data.root={synthetic_root}", "hparams_search=quickstart_optuna",
                       "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=3",
                       f"hydra.sweep.dir={sweep}", f"runs_dir={tmp_path / 'runs'}")
    assert result.returncode == 0, explain(result)
    best = re.search(r"Best value: ([\d.]+)", result.stdout + result.stderr)
    assert best, explain(result)
    scores = [pd.read_csv(sweep / str(k) / "metrics.csv")["val/mIoU"].max() for k in range(3)]
    assert float(best.group(1)) == pytest.approx(max(scores), abs=1e-6)  # the best of the trials' best val/mIoU
    assert (sweep / "optimization_results.yaml").is_file()
    out = tmp_path / "compare.md"
    assert compare([str(sweep), "--out", str(out)]) == 0
    table = out.read_text()
    assert all(f"{k}" in table for k in range(3)) and "optimizer.lr" in table
