"""The CPU path: thread and worker sizing (`threads`), one channels_last switch for training and
inference (`channels_last`), and bf16-mixed training on a CPU, on tiny synthetic data."""

from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from trashseg.inference.checkpoint import load_checkpoint
from trashseg.memory_format import wants_channels_last
from trashseg.training import run as run_module
from trashseg.training.launching import threads as threads_module
from trashseg.training.resuming.changes import check_resume_config
from trashseg.training.launching.threads import plan_threads, processes_per_node

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def machine(monkeypatch):
    """A machine whose affinity and torch default the test chooses: machine(cores, torch_threads)."""
    def set_up(cores: int, torch_threads: int) -> None:
        monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(threads_module.torch, "get_num_threads", lambda: torch_threads)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return set_up


def test_auto_shares_the_affinity_among_the_processes_of_the_node(machine):
    machine(cores=8, torch_threads=8)
    alone = plan_threads("auto", 6, {"devices": 1})
    assert (alone.cores, alone.threads, alone.workers) == (8, 8, 6)
    ddp = plan_threads("auto", 6, {"accelerator": "cpu", "devices": 4})
    assert (ddp.cores, ddp.threads, ddp.workers) == (2, 2, 2)  # 4 processes x (2 threads, 2 workers) on 8 cores


def test_a_pinned_run_gets_one_thread_and_one_worker(machine):
    machine(cores=1, torch_threads=1)  # taskset -c 0
    plan = plan_threads(None, 2, {"devices": "auto"})  # null: a config from before the key
    assert (plan.threads, plan.workers) == (1, 1)


def test_auto_never_raises_a_lower_count_set_before(machine):
    machine(cores=4, torch_threads=1)  # OMP_NUM_THREADS=1, or torch.set_num_threads(1) in a notebook
    assert plan_threads("auto", 2, {"devices": 1}).threads == 1


def test_a_thread_count_is_taken_as_given_and_workers_stay_capped(machine):
    machine(cores=2, torch_threads=2)
    plan = plan_threads(3, 4, {"devices": 1})
    assert (plan.threads, plan.workers) == (3, 2)


@pytest.mark.parametrize("setting", ["many", 0, -2, True, 1.5])
def test_a_bad_thread_setting_is_one_line(setting):
    with pytest.raises(ValueError, match=r"^threads=.* give auto or a whole number >= 1$"):
        plan_threads(setting, 2, {"devices": 1})


def test_torchrun_local_world_size_wins_over_devices(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert processes_per_node({"devices": 1}) == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert processes_per_node({"devices": [0, 1]}) == 2 and processes_per_node({"devices": "2"}) == 2


def test_channels_last_auto_is_on_for_cuda_only():
    assert not wants_channels_last("auto", "cpu") and wants_channels_last("auto", torch.device("cuda"))
    assert wants_channels_last(True, "cpu") and not wants_channels_last(False, torch.device("cuda"))
    assert not wants_channels_last(None, "cpu")  # a checkpoint from before the key: as auto
    with pytest.raises(ValueError, match=r"^channels_last='yes' is not a choice; give auto, true or false$"):
        wants_channels_last("yes", "cpu")


@pytest.mark.parametrize("override, message", [("channels_last=sometimes", r"^channels_last='sometimes' is not a choice"),
                                               ("threads=many", r"^threads='many' is not a thread count")])
def test_a_bad_cpu_path_key_stops_before_any_run_folder(synthetic_root, tmp_path, override, message):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=quickstart", f"data.root={synthetic_root}",
                                                      f"runs_dir={tmp_path / 'runs'}", override])
    with pytest.raises(ValueError, match=message):
        run_module.train(cfg, tmp_path / "runs" / "quickstart" / "bad")
    assert not (tmp_path / "runs").exists()


def test_runs_saved_before_the_keys_resume_with_their_defaults():
    saved = {"seed": 1, "data": {"num_workers": 2}}
    new = {"seed": 1, "data": {"num_workers": 1}, "threads": "auto", "channels_last": "auto"}
    assert set(check_resume_config(saved, new, "last.ckpt")) == {"threads", "channels_last", "data.num_workers"}


def test_a_pinned_bf16_channels_last_run_trains_and_infers_in_that_format(synthetic_root, tmp_path, monkeypatch):
    """One core in the affinity: the run records one loader worker; its weights are channels_last
    in the checkpoint, and inference (the same switch) gives what a contiguous copy gives."""
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: {0})
    overrides = ["experiment=quickstart", f"data.root={synthetic_root}", "data.num_workers=2", "data.batch_size=4",
                 "data.val_batch_size=5", "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "logger=csv",
                 f"runs_dir={tmp_path / 'runs'}", "model.decoder.decoder_channels=[32,16,16,8,8]",
                 "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "scheduler.warmup_steps=0",
                 "trainer.precision=bf16-mixed", "channels_last=true"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run_dir = tmp_path / "runs" / "quickstart" / "pinned"
    metrics = run_module.train(cfg, run_dir)
    assert torch.isfinite(torch.tensor(metrics["train/loss"])) and 0 <= metrics["val/mIoU"] <= 1
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["num_workers"] == 1 and saved["channels_last"] is True
    ckpt = torch.load(run_dir / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    convs = [v for k, v in ckpt["state_dict"].items() if k.startswith("model.") and v.dim() == 4 and v.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)

    net = load_checkpoint(run_dir / "checkpoints/best.ckpt").net("cpu")
    assert net.channels_last and net.compute_dtype == torch.bfloat16  # it predicts as it trained
    net.compute_dtype = None  # float32 here: the comparison is of memory formats
    first_conv = next(m for m in net.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    seen = []
    first_conv.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        logits = net(pixels)
        contiguous = load_checkpoint(run_dir / "checkpoints/best.ckpt").model.eval().to(memory_format=torch.contiguous_format)
        reference = contiguous(net.normalize(pixels))
    assert seen == [True]
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
