"""Precision: `auto` resolved and recorded, bf16-mixed end to end on the CPU (training and inference),
16-mixed steps with a NaN loss skipped as GradScaler skips them (several in a row stop the run),
non-finite weights and logits stopped in one line naming the checkpoint."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from lightning.pytorch.plugins.precision import MixedPrecision

from trashseg.data.datamodule import TrashDataModule
from trashseg.inference.checkpoint import load_checkpoint
from trashseg.precision import autocast_dtype
from trashseg.inference.loop import build_loader
from trashseg.inference.predictor import NonFiniteLogitsError, Predictor
from trashseg.training import run as run_module
from trashseg.training.run_config import plain_config
from trashseg.training.module import NonFiniteLossError, SegmentationModule
from trashseg.training.callbacks.nonfinite import NonFiniteStreak
from trashseg.precision import resolve_precision

from small_runs import small_quickstart

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config(synthetic_root, tmp_path, *overrides):
    return small_quickstart(synthetic_root, tmp_path, "trainer.num_sanity_val_steps=0", *overrides)


def test_auto_is_bf16_on_a_native_bf16_gpu_else_16_mixed_and_32_true_on_a_cpu(monkeypatch):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        assert compose(config_name="train", overrides=["trainer=gpu"]).trainer.precision == "auto"
    gpu = {"accelerator": "gpu", "precision": "auto"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []

    def bf16(including_emulation=True):
        asked.append(including_emulation)
        return supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16)
    supported = True
    assert resolve_precision(gpu) == "bf16-mixed"
    supported = False  # a V100 / T4: bf16 only emulated, slower than float16 with loss scaling
    assert resolve_precision(gpu) == "16-mixed"
    assert asked == [False, False]  # emulated bf16 does not count
    assert resolve_precision({"accelerator": "cpu", "precision": "auto"}) == "32-true"
    # Lightning trains 16-mixed on a CPU in bf16-mixed: the config says what ran, and inference runs bf16
    assert resolve_precision({"accelerator": "cpu", "precision": "16-mixed"}) == "bf16-mixed"
    assert resolve_precision({**gpu, "precision": "16-mixed"}) == "16-mixed"  # an explicit choice stays


@pytest.mark.parametrize("precision, device, expected", [
    ("bf16-mixed", "cpu", torch.bfloat16), ("bf16-mixed", "cuda", torch.bfloat16), ("16-mixed", "cuda", torch.float16),
    ("16-mixed", "cpu", None), ("32-true", "cuda", None), ("32-true", "cpu", None),
])
def test_inference_computes_in_the_precision_the_run_trained_in(precision, device, expected):
    """Before, every CUDA prediction ran float16 autocast, a 32-true or bf16 run's too."""
    assert autocast_dtype(precision, torch.device(device)) == expected


@pytest.fixture(scope="module")
def bf16_run(synthetic_root, tmp_path_factory):
    """A run trained end to end in bf16-mixed on the CPU, precision given as `auto` resolved first
    (then bf16-mixed set explicitly): 3 epochs, so its predictions are not ties."""
    tmp_path = tmp_path_factory.mktemp("bf16")
    auto_dir = tmp_path / "runs" / "quickstart" / "auto"
    run_module.train(config(synthetic_root, tmp_path, "trainer.precision=auto", "trainer.max_epochs=1",
                            "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"), auto_dir)
    run_dir = tmp_path / "runs" / "quickstart" / "bf16"
    metrics = run_module.train(config(synthetic_root, tmp_path, "trainer.precision=bf16-mixed", "trainer.max_epochs=3"),
                               run_dir)
    return auto_dir, run_dir, metrics


def test_auto_is_recorded_resolved_in_config_and_checkpoint(bf16_run):
    auto_dir, _, _ = bf16_run
    assert yaml.safe_load((auto_dir / "config.yaml").read_text())["trainer"]["precision"] == "32-true"  # a CPU run
    assert load_checkpoint(auto_dir / "checkpoints" / "last.ckpt").cfg["trainer"]["precision"] == "32-true"


def test_bf16_mixed_trains_end_to_end_on_the_cpu(bf16_run):
    _, run_dir, metrics = bf16_run
    assert math.isfinite(metrics["train/loss"]) and 0 < metrics["val/mIoU"] <= 1
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    loaded = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert loaded.net("cpu").compute_dtype == torch.bfloat16  # predicts as it trained


def test_bf16_inference_agrees_with_float32_on_labels(bf16_run):
    """bfloat16 keeps 8 bits of mantissa: logits move by about 1% of their size, and a label flips
    only where float32's two best classes are closer than that. Asserted: the logits do differ (bf16
    really ran), and the labels agree on at least 99% of the val pixels."""
    _, run_dir, _ = bf16_run
    loaded = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    loader = build_loader(loaded.cfg, "val", loaded.classes, num_workers=0)
    bf16, fp32 = loaded.net("cpu"), loaded.net("cpu")
    fp32.compute_dtype = None
    same = total = 0
    differ = False
    with torch.inference_mode():
        for batch in loader:
            a, b = bf16(batch["image"]), fp32(batch["image"])
            differ |= not torch.equal(a, b)
            same += int((a.argmax(1) == b.argmax(1)).sum())
            total += a.argmax(1).numel()
    assert differ
    assert same / total >= 0.99, f"bf16 and float32 labels agree on {same / total:.4f} of {total} pixels"


def test_weights_or_logits_that_are_not_finite_stop_naming_the_checkpoint(bf16_run, tmp_path):
    _, run_dir, _ = bf16_run
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.startswith("model.head."))
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], math.nan)
    diverged = tmp_path / "diverged.ckpt"
    torch.save(ckpt, diverged)
    with pytest.raises(ValueError, match=rf"{diverged}: {name.removeprefix('model.')} holds NaN or inf") as err:
        load_checkpoint(diverged)
    assert "\n" not in str(err.value)

    good = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")

    class Overflowing(torch.nn.Module):  # as a 16-mixed run's network on CUDA whose float16 overflows
        compute_dtype = torch.float16

        def forward(self, pixels):
            return good.net("cpu")(pixels) * math.inf

    class Source:
        path, cfg, classes = Path("runs/x/checkpoints/fp16.ckpt"), good.cfg, good.classes

        def net(self, device="cpu"):
            return Overflowing()

    predictor = Predictor([good, Source()], device="cpu")
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with pytest.raises(NonFiniteLogitsError, match=r"runs/x/checkpoints/fp16.ckpt gave NaN or inf logits for this batch "
                                                   r"\(computed in float16 .* --device cpu predicts it in float32\)") as err:
        predictor.predict(images)
    assert "\n" not in str(err.value)
    assert Predictor([good], device="cpu").predict(images).shape == (2, 64, 64)


def test_nonfinite_streak_counts_across_reads_and_takes_the_maximum_over_ranks():
    streak = NonFiniteStreak(3)
    for value in (1.0, math.nan, math.inf):
        streak.add(torch.tensor(value))
    assert streak.read() == 2 and not streak.exceeded()  # nothing pending: the same 2
    streak.add(torch.tensor(math.nan))  # the third in a row, across two reads
    assert streak.exceeded()
    other = NonFiniteStreak(2)
    for value in (1.0, 1.0):
        other.add(torch.tensor(value))
    assert other.read(lambda flags: torch.maximum(flags, torch.tensor([1, 1], dtype=torch.int32))) == 2  # another rank's NaN
    with pytest.raises(ValueError, match="nonfinite_losses_in_a_row=0: give 1 or more"):
        NonFiniteStreak(0)


class StepWatch(L.Callback):
    """Head weights before and after every optimizer step, and the scaler's scale after it."""

    def __init__(self):
        self.before, self.after, self.scale = {}, {}, {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before[trainer.global_step] = module.model.head[0].weight.detach().clone()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        self.after[step] = module.model.head[0].weight.detach().clone()
        self.scale[step] = trainer.precision_plugin.scaler.get_scale()


def fit_16_mixed(synthetic_root, tmp_path, monkeypatch, nan_steps, *overrides):
    """Steps 0..5 of quickstart under 16-mixed with a GradScaler (on the CPU: Lightning itself would turn
    16-mixed into bf16-mixed there, so the plugin is given directly), the loss NaN at `nan_steps`."""
    original = SegmentationModule._loss

    def poisoned(self, out, target):
        loss = original(self, out, target)
        return loss * math.nan if self.training and self.global_step in nan_steps else loss

    monkeypatch.setattr(SegmentationModule, "_loss", poisoned)
    cfg = plain_config(config(synthetic_root, tmp_path, *overrides))
    torch.manual_seed(0)
    module, watch = SegmentationModule(cfg), StepWatch()
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=2,
                        use_distributed_sampler=False, callbacks=[watch],
                        plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**8))])
    trainer.fit(module, datamodule=TrashDataModule(**cfg["data"], augment=cfg["augment"]))
    return trainer, watch


def test_16_mixed_skips_a_nan_loss_step_as_gradscaler_does(synthetic_root, tmp_path, monkeypatch):
    trainer, watch = fit_16_mixed(synthetic_root, tmp_path, monkeypatch, {2, 3})  # two in a row: under the limit of 3
    assert trainer.global_step == 6  # the run went on
    for step in (2, 3):
        assert torch.equal(watch.before[step], watch.after[step]), f"step {step} changed the weights"
        assert watch.scale[step] == watch.scale[step - 1] / 2  # GradScaler backs off on an overflow
    assert not torch.equal(watch.before[4], watch.after[4])  # and trains again after


def test_16_mixed_stops_on_several_nan_losses_in_a_row(synthetic_root, tmp_path, monkeypatch):
    with pytest.raises(NonFiniteLossError, match=r"NaN or inf in 3 training steps in a row \(nonfinite_losses_in_a_row=3\)"
                                                 r".*last good checkpoint is kept"):
        fit_16_mixed(synthetic_root, tmp_path, monkeypatch, {1, 2, 3})
    # the limit is a config key: 4 tolerates the same three
    trainer, _ = fit_16_mixed(synthetic_root, tmp_path, monkeypatch, {1, 2, 3}, "nonfinite_losses_in_a_row=4")
    assert trainer.global_step == 6
