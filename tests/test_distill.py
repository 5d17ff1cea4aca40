"""Knowledge distillation (trashseg.training.distill): the KL term by hand, 255 pixels, teachers
rebuilt from checkpoints and kept out of the student's, one-line errors, a student moving toward
its teacher, exact resume and DDP."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.nn import functional as F

from trashseg.data.datamodule import TrashDataModule
from trashseg.training import run as run_module
from trashseg.training.run_config import plain_config
from trashseg.training.distill import Distiller, StreamKeys, kd_loss
from trashseg.training.module import UNLABELLED_POSITION, SegmentationModule

REPO = Path(__file__).resolve().parents[1]
# 24 train images of 64 px in batches of 4: 6 steps an epoch, with a shallow narrow student
SMALL = ["experiment=quickstart", "data.num_workers=0", "data.batch_size=4", "data.val_batch_size=5", "logger=csv",
         "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0",
         "+trainer.enable_model_summary=false", "trainer.log_every_n_steps=1", "model.encoder_depth=3",
         "model.decoder.decoder_channels=[16,8,8]"]


def config(root, tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*SMALL, f"data.root={root}", f"runs_dir={tmp_path / 'runs'}",
                                                       *overrides])


def plain(root, tmp_path, *overrides) -> dict:
    return plain_config(config(root, tmp_path, *overrides))


def save_checkpoint(module: SegmentationModule, path: Path, **cfg_changes) -> Path:
    """The fields train.py's checkpoints carry that a teacher needs: weights and the run config."""
    cfg = {**module.cfg, **cfg_changes}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"cfg": cfg}}, path)
    return path


@pytest.fixture(scope="module")
def rolled_teacher(synthetic_root, tmp_path_factory) -> Path:
    """A teacher of another architecture than the students (full-depth encoder, wider decoder),
    trained 3 epochs on the synthetic data, then its head rolled by one class: it predicts class
    c + 1 where it saw c, so agreeing with it can only come from the KL term, never from the labels."""
    tmp = tmp_path_factory.mktemp("teacher")
    run_dir = tmp / "runs" / "teacher"
    torch.manual_seed(0)
    run_module.train(config(synthetic_root, tmp, "trainer.max_epochs=3", "model.encoder_depth=5",
                            "model.decoder.decoder_channels=[32,16,16,8,8]"), run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for key in ("model.head.0.weight", "model.head.0.bias"):
        ckpt["state_dict"][key] = ckpt["state_dict"][key].roll(1, dims=0)
    torch.save(ckpt, tmp / "rolled.ckpt")
    return tmp / "rolled.ckpt"


@pytest.fixture
def random_teacher(synthetic_root, tmp_path) -> Path:
    """An untrained teacher of another architecture (full-depth encoder), saved like train.py saves."""
    torch.manual_seed(5)
    cfg = plain(synthetic_root, tmp_path, "model.encoder_depth=5", "model.decoder.decoder_channels=[32,16,16,8,8]")
    return save_checkpoint(SegmentationModule(cfg), tmp_path / "random_teacher.ckpt")


def kd_overrides(teacher: Path, *more: str) -> list[str]:
    return ["distill=kd", f"distill.teacher=[{teacher}]", *more]


# ---------------------------------------------------------------- the loss

def test_kl_on_a_2x2_example_by_hand_at_temperature_2():
    """Two classes, T = 2. Teacher logits per pixel (2,0) (0,0) (0,4) (6,6); student (0,0) (2,0) (0,0) (1,1).
    Softened (logits / 2): teacher (1,0) -> p = (e/(e+1), 1/(e+1)) = (0.731059, 0.268941); (0,0) -> (0.5, 0.5);
    (0,2) -> (0.119203, 0.880797). Student (0,0) -> (0.5, 0.5); (1,0) -> (0.731059, 0.268941).
    KL(p||q) = sum p ln(p/q), with ln(1.462117) = 0.379885, ln(0.537883) = -0.620115, ln(0.238406) = -1.433781,
    ln(1.761594) = 0.566219:
      pixel 1: 0.731059 x 0.379885 + 0.268941 x -0.620115 = 0.277719 - 0.166774 = 0.110944
      pixel 2: 0.5 x -0.379885 + 0.5 x 0.620115 = 0.120115
      pixel 3: 0.119203 x -1.433781 + 0.880797 x 0.566219 = -0.170911 + 0.498724 = 0.327813
      pixel 4: labelled 255, not counted.
    Mean of the three x T^2 = (0.110944 + 0.120115 + 0.327813) / 3 x 4 = 0.745163."""
    teacher_logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 4.0], [6.0, 6.0]]).t().reshape(1, 2, 2, 2)
    student_logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [1.0, 1.0]]).t().reshape(1, 2, 2, 2)
    valid = torch.tensor([[[True, True], [True, False]]])
    loss = kd_loss([(student_logits, (teacher_logits / 2).softmax(1), valid)], temperature=2.0)
    assert loss.item() == pytest.approx(0.745163, abs=2e-6)
    # and PyTorch's own KL agrees on the counted pixels
    reference = F.kl_div(F.log_softmax(student_logits / 2, 1), (teacher_logits / 2).softmax(1), reduction="none").sum(1)
    assert loss.item() == pytest.approx(4 * reference[valid].mean().item(), rel=1e-6)


def test_pixels_labelled_255_never_count_in_either_term(synthetic_root, tmp_path):
    """Student logits and teacher probabilities changed at the 255 pixels leave CE, KL and their sum
    unchanged; a change at one labelled pixel does not."""
    torch.manual_seed(0)
    cfg = plain(synthetic_root, tmp_path)
    teacher = save_checkpoint(SegmentationModule(cfg), tmp_path / "teacher.ckpt")
    module = SegmentationModule({**cfg, "distill": {"teacher": [str(teacher)], "alpha": 0.3, "temperature": 3.0}})
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 11, 8, 8, generator=generator)
    teacher_probs = torch.randn(2, 11, 8, 8, generator=generator).softmax(1)
    target = torch.randint(0, 11, (2, 8, 8), generator=generator)
    target[0, :, 5:] = 255  # padding at the right of image 0
    target[1, 2:4, 2:4] = 255  # an ignored region inside image 1
    ignored = target == 255

    def total(student, soft):
        ce = module.criterion(student, target)
        return module.distiller.combine(ce, kd_loss([(student, soft, ~ignored)], 3.0)), ce

    before, ce_before = total(logits, teacher_probs)
    noise = torch.randn(logits.shape, generator=generator) * 50
    mask = ignored.unsqueeze(1)
    after, ce_after = total(logits + noise * mask, torch.where(mask, torch.roll(teacher_probs, 1, dims=1), teacher_probs))
    assert ce_after.item() == ce_before.item() and after.item() == pytest.approx(before.item(), rel=1e-6)
    changed = logits.clone()
    changed[1, 3, 0, 0] += 5.0  # one class's logit at a labelled pixel
    assert total(changed, teacher_probs)[0].item() != pytest.approx(before.item(), rel=1e-4)


def test_kl_is_zero_when_the_student_is_its_teacher(synthetic_root, tmp_path):
    torch.manual_seed(0)
    cfg = plain(synthetic_root, tmp_path)
    student = SegmentationModule(cfg).eval()  # eval: batch norm as the frozen teacher runs it
    teacher = save_checkpoint(student, tmp_path / "self.ckpt")
    distiller = Distiller({"teacher": [str(teacher), str(teacher)], "weights": [2, 1], "temperature": 4.0}, student.classes)
    images = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8)
    with torch.no_grad():
        logits = student(images)
    valid = torch.ones(2, 64, 48, dtype=torch.bool)
    assert distiller.kd([(images, logits, valid)]).item() == pytest.approx(0.0, abs=1e-5)
    other = Distiller({"teacher": [str(teacher)], "temperature": 4.0}, student.classes)
    assert other.kd([(images, logits.flip(1), valid)]).item() > 1e-3  # and not zero for another student


def test_teacher_tta_averages_the_flipped_views_and_logits_are_resized(synthetic_root, tmp_path):
    """hflip TTA = the mean of the teacher's probabilities on the image and on its mirror (mirrored
    back); a teacher output of another size is resized bilinearly to the student's."""
    torch.manual_seed(0)
    cfg = plain(synthetic_root, tmp_path)
    module = SegmentationModule(cfg).eval()
    path = save_checkpoint(module, tmp_path / "t.ckpt")
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    plain_view = Distiller({"teacher": [str(path)], "temperature": 2.0}, module.classes).soft_targets(images, (32, 32))
    flipped = Distiller({"teacher": [str(path)], "temperature": 2.0}, module.classes).soft_targets(images.flip(-1), (32, 32))
    hflip = Distiller({"teacher": [str(path)], "temperature": 2.0, "tta": "hflip"}, module.classes)
    torch.testing.assert_close(hflip.soft_targets(images, (32, 32)), (plain_view + flipped.flip(-1)) / 2)
    with torch.no_grad():
        logits = module(images)
    expected = (F.interpolate(logits, size=(48, 40), mode="bilinear", align_corners=False) / 2).softmax(1)
    small = Distiller({"teacher": [str(path)], "temperature": 2.0}, module.classes)
    torch.testing.assert_close(small.soft_targets(images, (48, 40)), expected)


# ---------------------------------------------------------------- errors

def test_bad_teacher_path_class_list_and_keys_are_one_line_before_any_run_folder(synthetic_root, tmp_path):
    torch.manual_seed(0)
    cfg = plain(synthetic_root, tmp_path)
    classes = list(cfg["data"]["classes"])
    other = save_checkpoint(SegmentationModule(cfg), tmp_path / "other.ckpt",
                            data={**cfg["data"], "classes": classes[:-1] + ["Shoes"]})
    good = save_checkpoint(SegmentationModule(cfg), tmp_path / "good.ckpt")
    cases = [
        (FileNotFoundError, kd_overrides(tmp_path / "missing.ckpt"), "distill.teacher: checkpoint not found: .*missing.ckpt"),
        (ValueError, kd_overrides(other), r"distill.teacher .*other.ckpt was trained on classes .*'Shoes'.* but this "
                                          r"run's data.classes is .*'Clothing'.*same class list"),
        (ValueError, kd_overrides(good, "+distill.alpah=0.1"), r"unknown config key 'distill.alpah'; did you mean distill.alpha"),
        (ValueError, ["distill=kd"], r"distill.teacher=\[\]: give one or more checkpoint paths"),
        (ValueError, kd_overrides(good, "distill.alpha=1.5"), r"distill.alpha=1.5: a weight in \[0, 1\]"),
        (ValueError, kd_overrides(good, "distill.tta=rot"), r"distill.tta='rot': choose one of none, hflip"),
        (ValueError, kd_overrides(good, "distill.weights=[1,2]"), r"distill.weights=\[1, 2\]: one non-negative weight per "
                                                                   r"teacher \(1\)"),
        (FileNotFoundError, kd_overrides(good, "distill.unlabelled=[{ann:nope.json}]"),
         r"distill.unlabelled\[0\]: annotation file not found: .*nope.json; 'ann' is relative to the source's root"),
    ]
    for error, overrides, message in cases:
        run_dir = tmp_path / "runs" / "x"
        with pytest.raises(error, match=message) as caught:
            run_module.train(config(synthetic_root, tmp_path, *overrides), run_dir)
        assert "\n" not in str(caught.value) and not run_dir.exists()


@pytest.mark.slow
def test_train_py_prints_a_missing_teacher_as_one_line(synthetic_root, tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", *SMALL, f"data.root={synthetic_root}", f"runs_dir={tmp_path}", "distill=kd",
         f"distill.teacher=[{tmp_path / 'nope.ckpt'}]", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: distill.teacher: checkpoint not found:")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- training

def agreement(module: SegmentationModule, teacher: Distiller, cfg: dict) -> float:
    """Share of val pixels where the student's argmax equals the teacher's."""
    data = TrashDataModule(**cfg["data"], augment=cfg["augment"])
    data.setup("validate")
    same = total = 0
    module.eval()
    with torch.no_grad():
        for batch in data.val_dataloader():
            student = module(batch["image"]).argmax(1)
            target = teacher.soft_targets(batch["image"], student.shape[-2:]).argmax(1)
            same, total = same + int((student == target).sum()), total + student.numel()
    return same / total


@pytest.mark.slow
def test_a_distilled_student_moves_toward_its_teacher_and_the_teacher_stays_out_of_its_checkpoint(
        synthetic_root, tmp_path, rolled_teacher):
    """alpha 1 (the teacher alone) for 2 epochs: the student's val predictions, which agreed with the
    (rolled) teacher's on almost no pixel, agree on most; train/ce and train/kd are logged; the
    checkpoint holds the student's own keys only, and the teacher's path in its config."""
    overrides = kd_overrides(rolled_teacher, "distill.alpha=1.0", "trainer.max_epochs=2")
    cfg = plain(synthetic_root, tmp_path, *overrides)
    torch.manual_seed(1)
    teacher = Distiller(cfg["distill"], cfg["data"]["classes"])
    before = agreement(SegmentationModule(cfg), teacher, cfg)
    run_dir = tmp_path / "runs" / "student"
    run_module.train(config(synthetic_root, tmp_path, *overrides), run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # built as the run built it: its config records the encoder modules the run dropped (model.dropped)
    student = SegmentationModule({k: v for k, v in ckpt["hyper_parameters"]["cfg"].items() if k != "distill"})
    assert set(ckpt["state_dict"]) == set(student.state_dict())  # no teacher weights
    assert ckpt["hyper_parameters"]["cfg"]["distill"]["teacher"] == [str(rolled_teacher)]
    student.load_state_dict(ckpt["state_dict"])
    after = agreement(student, teacher, cfg)
    assert before < 0.2 and after > 0.6, (before, after)
    table = pd.read_csv(run_dir / "metrics.csv")
    assert {"train/ce", "train/kd", "train/loss"} <= set(table)
    torch.testing.assert_close(table["train/loss"].dropna().tolist(), table["train/kd"].dropna().tolist())  # alpha 1


def test_stream_keys_deal_every_image_once_a_pass_and_restart_at_a_position():
    """5 images, 2 processes: a pass deals 3 keys to each (one image twice, as a DistributedSampler
    pads); a stream started at item 4 continues the stream from 0 exactly; the next pass is another order."""
    def take(n, **kw):
        return [key for _, key in zip(range(n), StreamKeys(size=5, seed=3, world=2, **kw))]

    first, second = take(3, rank=0), take(3, rank=1)
    assert {i for i, _ in first + second} == {0, 1, 2, 3, 4}
    stream = take(9, rank=0)
    assert stream[:3] == first and take(5, rank=0, start=4) == stream[4:9]
    assert stream[3:6] != stream[:3]  # pass 1: its own order and augmentation seeds


@pytest.mark.slow
def test_resumed_distillation_with_unlabelled_images_equals_an_uninterrupted_one(
        synthetic_root, tmp_path, random_teacher, monkeypatch):
    """1 epoch + resume + 1 epoch = 2 epochs straight (torch.equal weights), with teacher hflip TTA
    and the test images as an unlabelled source at their own batch size."""
    overrides = [*kd_overrides(random_teacher, "distill.tta=hflip", "distill.unlabelled=[{ann:test.json}]",
                               "distill.unlabelled_batch_size=3"), "trainer.max_epochs=2", "trainer.deterministic=true"]
    straight = tmp_path / "runs" / "straight"
    run_module.train(config(synthetic_root, tmp_path, *overrides), straight)

    def interrupt_after_first_epoch(self):
        self.trainer.should_stop = True

    first = tmp_path / "runs" / "first"
    with monkeypatch.context() as patch:
        patch.setattr(SegmentationModule, "on_train_epoch_end", interrupt_after_first_epoch, raising=False)
        run_module.train(config(synthetic_root, tmp_path, *overrides), first)
    resumed = first / "checkpoints" / "last.ckpt"
    halfway = torch.load(resumed, weights_only=True)
    assert halfway["epoch"] == 0 and halfway[UNLABELLED_POSITION] == 6 * 3  # 6 steps of 3 unlabelled images
    run_module.train(config(synthetic_root, tmp_path, *overrides, f"resume={resumed}"), tmp_path / "runs" / "unused")
    a = torch.load(straight / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(resumed, map_location="cpu", weights_only=True)
    assert b[UNLABELLED_POSITION] == a[UNLABELLED_POSITION] == 12 * 3
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


@pytest.mark.slow
def test_distillation_under_ddp_runs_a_teacher_per_process(synthetic_root, tmp_path, random_teacher):
    """Two gloo processes (train.py, trainer=ddp_cpu): each runs its own teacher and its own share of
    the unlabelled stream; the checkpoint holds the student alone."""
    run_dir = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "train.py", *SMALL, f"data.root={synthetic_root}", f"runs_dir={tmp_path}", "trainer=ddp_cpu",
         "model.encoder_depth=5", "model.decoder.decoder_channels=[32,16,16,8,8]",  # DDP: every parameter used
         *kd_overrides(random_teacher, "distill.unlabelled=[{ann:test.json}]", "distill.unlabelled_batch_size=2"),
         f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=400, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt[UNLABELLED_POSITION] == 3 * 2  # 24 images / (2 processes x 4) = 3 steps, 2 unlabelled images each
    assert all(k.startswith(("model.", "criterion.")) for k in ckpt["state_dict"])
    assert pd.read_csv(run_dir / "metrics.csv")["train/kd"].notna().any()


def test_a_copy_of_the_student_shares_its_teachers(synthetic_root, tmp_path, random_teacher):
    """Weight averaging deep-copies the whole module: the copy gets the student's weights, not a
    second set of teachers or a second unlabelled stream."""
    cfg = plain(synthetic_root, tmp_path, *kd_overrides(random_teacher, "distill.unlabelled=[{ann:test.json}]"))
    module = SegmentationModule(cfg)
    twin = copy.deepcopy(module)
    assert twin.distiller is module.distiller and twin.unlabelled is module.unlabelled
    assert twin.model is not module.model and torch.equal(twin.model.head[0].weight, module.model.head[0].weight)
