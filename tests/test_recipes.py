"""Training recipes (issue 12): nested augment lists with 255 mask borders, copy-paste,
class-balanced sampling, post-processing of predictions; each against hand-made expectations."""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from trashseg.data import CLASSES, IGNORE_INDEX, CocoSegmentationDataset
from trashseg.data import copy_paste as copy_paste_module
from trashseg.data.samplers import ClassBalancedSampler, SeededSampler, item_seed, repeat_factors
from trashseg.data.transforms import build_transforms
from trashseg.inference.postprocess import check_post, dense_crf, mode_filter3
from trashseg.training import run as run_module
from trashseg.training.module import SegmentationModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def augment_config(name: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name=f"augment/{name}").augment)


BATTERY, PAPER, PLASTIC = CLASSES.index("Battery"), CLASSES.index("Paper"), CLASSES.index("Plastic")


# ---------------------------------------------------------------- augment lists

def _apply(steps, image, mask, seed):
    transforms = build_transforms(steps)
    transforms.set_random_seed(seed)
    out = transforms(image=image, mask=mask)
    return out["image"], out["mask"]


def _asymmetric(size=5):
    image = np.arange(size * size * 3, dtype=np.uint8).reshape(size, size, 3)
    return image, (np.arange(size * size).reshape(size, size) % 7).astype(np.uint8)


CHILDREN = """
- {name: HorizontalFlip, params: {p: 1.0}}
- {name: VerticalFlip, params: {p: 1.0}}
- {name: Transpose, params: {p: 1.0}}
"""
EFFECTS = [np.fliplr, np.flipud, lambda a: a.swapaxes(0, 1)]


def test_nested_one_of_applies_exactly_one_child():
    steps = yaml.safe_load(f"- name: OneOf\n  params: {{p: 1.0}}\n  transforms:{CHILDREN.replace(chr(10), chr(10) + '    ')}")
    image, mask = _asymmetric()
    chosen = set()
    for seed in range(40):
        out_image, out_mask = _apply(steps, image, mask, seed)
        matches = [k for k, f in enumerate(EFFECTS) if np.array_equal(out_image, f(image))]
        assert len(matches) == 1, seed  # one child, never none, never two composed
        assert np.array_equal(out_mask, EFFECTS[matches[0]](mask))
        chosen.add(matches[0])
    assert chosen == {0, 1, 2}


def test_some_of_two_and_sequential_nest_inside_each_other():
    children = yaml.safe_load(CHILDREN)
    image, mask = _asymmetric()
    pairs = {(i, j) for i in range(3) for j in range(3) if i != j}
    for seed in range(20):
        out, _ = _apply([{"name": "SomeOf", "params": {"n": 2, "p": 1.0}, "transforms": children}], image, mask, seed)
        assert any(np.array_equal(out, EFFECTS[j](EFFECTS[i](image))) for i, j in pairs)
    nested = [{"name": "Sequential", "params": {"p": 1.0}, "transforms": [
        children[0], {"name": "OneOf", "params": {"p": 1.0}, "transforms": [children[1]]}]}]
    out, out_mask = _apply(nested, image, mask, 0)
    assert np.array_equal(out, np.flipud(np.fliplr(image))) and np.array_equal(out_mask, np.flipud(np.fliplr(mask)))


def test_mask_borders_are_ignored_after_rotation_even_when_nested():
    image = np.full((32, 32, 3), 200, np.uint8)
    mask = np.full((32, 32), PAPER, np.uint8)  # no Background anywhere before the rotation
    rotate = {"name": "Rotate", "params": {"limit": [45, 45], "p": 1.0}}
    for steps in ([rotate], [{"name": "OneOf", "params": {"p": 1.0}, "transforms": [rotate]}],
                  [{"name": "Affine", "params": {"rotate": [30, 30], "p": 1.0}}]):
        _, out = _apply(steps, image, mask, 0)
        assert out[0, 0] == out[-1, -1] == IGNORE_INDEX
        assert set(np.unique(out)) == {PAPER, IGNORE_INDEX}  # never Background
    _, out = _apply([{"name": "Rotate", "params": {"limit": [45, 45], "fill_mask": 3, "p": 1.0}}], image, mask, 0)
    assert out[0, 0] == 3  # the YAML's own fill_mask wins
    # dropouts keep the labels under their holes (their albumentations default)
    dropped_image, out = _apply([{"name": "GridDropout", "params": {"ratio": 0.5, "p": 1.0}}], image, mask, 0)
    assert (dropped_image == 0).any() and (out == PAPER).all()


def test_nested_resize_keeps_masks_nearest():
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 5:27] = BATTERY
    steps = [{"name": "OneOf", "params": {"p": 1.0}, "transforms": [{"name": "Resize", "params": {"height": 23, "width": 19}}]}]
    _, out = _apply(steps, np.zeros((32, 32, 3), np.uint8), mask, 0)
    assert out.shape == (23, 19) and set(np.unique(out)) == {0, BATTERY}


@pytest.mark.parametrize("steps, message", [
    ([{"name": "OneOf", "transforms": [{"name": "HorizontalFlip"}, {"name": "Rotatee"}]}],
     r"augment step 0 > transforms\[1\]: unknown albumentations transform 'Rotatee'; did you mean Rotate"),
    ([{"name": "SomeOf", "transforms": [{"name": "Rotate", "params": {"limt": 30}}]}],
     r"augment step 0 > transforms\[0\] \(Rotate\): unknown parameter 'limt'; did you mean limit"),
    ([{"name": "OneOf", "transforms": []}], r"augment step 0 \(OneOf\): needs a non-empty list under 'transforms'"),
    ([{"name": "HorizontalFlip", "transforms": [{"name": "VerticalFlip"}]}], r"only containers .* take 'transforms'"),
    ([{"name": "Sequential", "transforms": [{"name": "Resize", "params": {"height": 8, "width": 8, "mask_interpolation": 1}}]}],
     r"transforms\[0\] \(Resize\): masks are always resized nearest-neighbour"),
])
def test_bad_nested_step_is_one_line(steps, message):
    with pytest.raises(ValueError, match=message) as err:
        build_transforms(steps)
    assert "\n" not in str(err.value)


def test_competition_strong_builds_and_keeps_labels():
    transforms = build_transforms(augment_config("competition_strong")["train"])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (600, 540, 3), dtype=np.uint8)
    mask = rng.integers(1, 11, (600, 540)).astype(np.uint8)
    seen = set()
    for seed in range(12):
        transforms.set_random_seed(seed)
        out = transforms(image=image, mask=mask)
        assert out["image"].shape == (512, 512, 3)
        seen |= set(np.unique(out["mask"]).tolist())
    assert seen <= set(range(1, 11)) | {IGNORE_INDEX}  # no Background invented, nothing blended


# ---------------------------------------------------------------- copy-paste

def _square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture()
def paste_root(tmp_path):
    """Image 1: a 10x8 Battery partly under a small Paper (area_desc keeps Paper on top), on
    noise; image 2: Plastic over every pixel, a flat colour. Lossless PNGs."""
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(np.full((32, 32, 3), (10, 200, 30), np.uint8)).save(root / "b.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32},
                       {"id": 2, "file_name": "b.png", "height": 32, "width": 32}],
            "categories": [{"id": 2, "name": "Paper"}, {"id": 6, "name": "Plastic"}, {"id": 9, "name": "Battery"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 9, "segmentation": _square(4, 6, 14, 14), "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 2, "segmentation": _square(10, 10, 14, 14), "iscrowd": 0},
                {"id": 3, "image_id": 2, "category_id": 6, "segmentation": _square(0, 0, 32, 32), "iscrowd": 0}]}
    (root / "ann.json").write_text(json.dumps(coco))
    return root


ONLY_BATTERY = {"p": 1.0, "max_objects": 1, "scale": [1.0, 1.0], "class_weights": {"Battery": 1}}


def test_pasted_object_lands_with_its_label_and_pixels_and_occludes(paste_root, tmp_path):
    ds = CocoSegmentationDataset(paste_root, "ann.json", cache_dir=tmp_path / "cache", copy_paste=ONLY_BATTERY)
    source = ds.read_image(0).permute(1, 2, 0).numpy()
    visible = np.zeros((32, 32), bool)
    visible[6:14, 4:14] = True
    visible[10:14, 10:14] = False  # under the Paper
    crop_image, crop_visible = source[6:14, 4:14], visible[6:14, 4:14]
    target = ds.read_image(1).permute(1, 2, 0).numpy()
    flips = set()
    for seed in range(8):
        item = ds[(1, seed)]
        image, mask = item["image"].permute(1, 2, 0).numpy(), item["mask"].numpy()
        pasted = mask == BATTERY
        assert pasted.sum() == visible.sum() == 64  # 80 px of Battery minus the 16 px the Paper covers
        assert set(np.unique(mask)) == {PLASTIC, BATTERY}  # occludes the Plastic, carries no Paper
        ys, xs = np.nonzero(pasted)
        box = np.s_[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
        flipped = not np.array_equal(pasted[box], crop_visible)
        flips.add(flipped)
        expected_image, expected_mask = (crop_image[:, ::-1], crop_visible[:, ::-1]) if flipped else (crop_image, crop_visible)
        assert np.array_equal(pasted[box], expected_mask)
        assert np.array_equal(image[box][expected_mask], expected_image[expected_mask])  # the source's own pixels
        assert np.array_equal(image[~pasted], target[~pasted])  # the rest untouched
    assert flips == {True, False}
    assert np.array_equal(ds[(1, 3)]["image"], ds[(1, 3)]["image"])  # a function of the item's seed


def test_pool_is_built_once_on_disk_and_shared(paste_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = CocoSegmentationDataset(paste_root, "ann.json", cache_dir=cache, copy_paste=ONLY_BATTERY)
    assert len(first.copy_paste.pool) == 1 and all(isinstance(part, Path) for part in first.copy_paste.pool.parts)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the pool was built again")

    monkeypatch.setattr(copy_paste_module, "_cut_objects", no_rebuild)
    again = CocoSegmentationDataset(paste_root, "ann.json", cache_dir=cache, copy_paste=ONLY_BATTERY)
    assert again.copy_paste.pool.parts == first.copy_paste.pool.parts
    from torch.utils.data import DataLoader  # workers draw the same pastes as the main process

    keys = [(1, s) for s in range(4)]
    in_workers = [b["mask"][0] for b in DataLoader(again, batch_size=1, num_workers=2, sampler=keys)]
    assert all(torch.equal(m, again[k]["mask"]) for m, k in zip(in_workers, keys))


def test_pool_pickles_as_its_file_names_for_spawned_workers(paste_root, tmp_path):
    import pickle

    ds = CocoSegmentationDataset(paste_root, "ann.json", cache_dir=tmp_path / "cache", copy_paste=ONLY_BATTERY)
    blob = pickle.dumps(ds.copy_paste.pool)
    assert len(blob) < 1000  # the crops' file names, not the crops
    again = pickle.loads(blob)
    assert all(np.array_equal(a, b) for a, b in zip(again.crop(0), ds.copy_paste.pool.crop(0)))


def test_extra_sources_are_balanced_and_pasted_too(paste_root, tmp_path):
    from trashseg.data import TrashDataModule

    module = TrashDataModule(paste_root, train_ann="ann.json", val_ann="ann.json", cache_dir=str(tmp_path / "cache"),
                             extra_train=[{"ann": "ann.json"}], sampler="class_balanced", repeat_threshold=1.0,
                             augment={"copy_paste": ONLY_BATTERY}, num_workers=0, batch_size=1)
    module.prepare_data()  # builds the pool once, on disk
    train = module.dataset("train")
    assert train.datasets[1].copy_paste is train.datasets[0].copy_paste
    # 4 images (2 per source): Battery and Paper in half of them -> r = sqrt(2); Plastic in half too
    np.testing.assert_allclose(module.train_dataloader().sampler.factors, [math.sqrt(2)] * 4)
    assert (train[(3, 0)]["mask"] == BATTERY).sum() == 64  # the extra copy of image 2 gets its paste
    with pytest.raises(ValueError, match=r"augment: unknown keys \['copypaste'\]"):
        TrashDataModule(paste_root, augment={"copypaste": {}})


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIGS / "augment" / "copy_paste").glob("*.yaml")))
def test_every_copy_paste_yaml_is_a_valid_config(name):
    cfg = yaml.safe_load((CONFIGS / "augment" / "copy_paste" / f"{name}.yaml").read_text())
    checked = copy_paste_module.check_config(cfg, CLASSES)
    assert checked["p"] == cfg["p"] and checked["max_objects"] == cfg["max_objects"]


@pytest.mark.parametrize("cfg, message", [
    ({"class_weights": {"Batery": 5}}, r"'Batery' is not a class of data.classes; did you mean 'Battery'"),
    ({"class_weights": {"Battery": 0}}, r"every weight is 0"),
    ({"class_weights": "rare"}, r"give a mapping \{class name: weight\}, 'rarity' or null"),
    ({"p": 2}, r"augment.copy_paste.p = 2"),
    ({"scale": [1.5, 0.5]}, r"0 < lo <= hi"),
    ({"max_object": 3}, r"unknown keys \['max_object'\]"),
])
def test_copy_paste_config_errors_are_one_line(paste_root, cfg, message):
    with pytest.raises(ValueError, match=message) as err:
        CocoSegmentationDataset(paste_root, "ann.json", cache_dir=False, copy_paste=cfg)
    assert "\n" not in str(err.value)


def test_rarity_weights_follow_inverse_square_root_of_object_counts(synthetic_root):
    ds = CocoSegmentationDataset(synthetic_root, "train.json", cache_dir=False, copy_paste={"class_weights": "rarity"})
    pool = ds.copy_paste.pool
    counts = np.array([len(pool.by_label[int(label)]) for label in ds.copy_paste.labels])
    expected = 1 / np.sqrt(counts)
    np.testing.assert_allclose(ds.copy_paste.rates, expected / expected.sum())


def test_resume_with_copy_paste_and_class_balanced_sampling_gives_identical_weights(synthetic_root, tmp_path, monkeypatch):
    """tests/test_train.py's resume test, with both recipes on: what they draw is a function of
    (seed, epoch, index), so 1 epoch + resume + 1 epoch = 2 epochs straight."""
    def config(*overrides):
        base = ["experiment=quickstart", f"data.root={synthetic_root}", "data.num_workers=0", "data.batch_size=8",
                "data.val_batch_size=5", "trainer.enable_progress_bar=false", "logger=csv", f"runs_dir={tmp_path / 'runs'}",
                "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]", "trainer.deterministic=true",
                "trainer.max_epochs=2",
                "data.sampler=class_balanced", "data.repeat_threshold=0.5", "+augment/copy_paste=rarity",
                "augment.copy_paste.p=1.0"]
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose(config_name="train", overrides=base + list(overrides))

    straight = tmp_path / "runs" / "straight"
    run_module.train(config(), straight)

    def interrupt_after_first_epoch(self):
        self.trainer.should_stop = True

    first = tmp_path / "runs" / "first"
    with monkeypatch.context() as patch:
        patch.setattr(SegmentationModule, "on_train_epoch_end", interrupt_after_first_epoch, raising=False)
        run_module.train(config(), first)
    resumed = first / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, weights_only=True)["epoch"] == 0
    run_module.train(config(f"resume={resumed}"), tmp_path / "runs" / "unused")
    a = torch.load(straight / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(resumed, map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the recipes were on: in the run's config, and the pool on disk beside the masks
    saved = yaml.safe_load((straight / "config.yaml").read_text())
    assert saved["data"]["sampler"] == "class_balanced" and saved["augment"]["copy_paste"]["p"] == 1.0
    assert list(Path(os.environ["TRASHSEG_CACHE"]).glob("v2/objects/*/*.npy"))


# ---------------------------------------------------------------- class-balanced sampling

class ToyDataset:
    """4 images over Background, A, B, C: {A}, {A, B}, {A}, {} (C in none)."""

    label_presence = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], bool)

    def __len__(self):
        return 4


def test_repeat_factors_by_hand():
    # t = 1: f(A) = 3/4 -> r = sqrt(4/3); f(B) = 1/4 -> r = 2; an image takes its rarest class's r
    np.testing.assert_allclose(repeat_factors(ToyDataset.label_presence, 1.0), [math.sqrt(4 / 3), 2, math.sqrt(4 / 3), 1])
    # t = 0.25: no class is rarer than that, nothing repeats
    np.testing.assert_allclose(repeat_factors(ToyDataset.label_presence, 0.25), [1, 1, 1, 1])


def test_sampler_frequencies_follow_the_repeat_factors():
    sampler = ClassBalancedSampler(ToyDataset(), 1.0, seed=3)
    factors = np.array([math.sqrt(4 / 3), 2, math.sqrt(4 / 3), 1])
    assert len(sampler) == math.ceil(factors.sum()) == 6
    counts = np.zeros(4)
    for epoch in range(2000):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert len(keys) == 6 and len(set(seed for _, seed in keys)) == 6  # a repeat gets its own augmentation
        counts += np.bincount([index for index, _ in keys], minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), factors / factors.sum(), atol=0.01)


def test_sampler_is_seeded_and_ddp_safe():
    def keys(epoch, rank=0, world=1, seed=0):
        sampler = ClassBalancedSampler(ToyDataset(), 1.0, num_replicas=world, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert keys(5) == keys(5) and keys(5) != keys(6) and keys(5) != keys(5, seed=1)
    ranks = [keys(5, rank, 4) for rank in range(4)]
    assert len({len(r) for r in ranks}) == 1 and sum(map(len, ranks)) == 8  # ceil(5.31) -> 6 -> padded to 8
    assert len({seed for r in ranks for _, seed in r}) == 8  # no key served twice across processes
    # an image's first draw has the shuffle sampler's seed: (seed, epoch, index)
    shuffle = SeededSampler(ToyDataset(), num_replicas=1, rank=0, seed=0)
    shuffle.set_epoch(5)
    assert {item_seed(0, 5, index) for index, _ in shuffle} == {seed for index, seed in shuffle}
    assert any(seed == item_seed(0, 5, index) for index, seed in keys(5))


def test_data_config_chooses_the_sampler(synthetic_root):
    from trashseg.data import TrashDataModule

    module = TrashDataModule(synthetic_root, sampler="class_balanced", repeat_threshold=0.5, num_workers=0, batch_size=2)
    loader = module.train_dataloader()
    assert isinstance(loader.sampler, ClassBalancedSampler)
    assert len(loader.sampler) == math.ceil(repeat_factors(module.dataset("train").label_presence, 0.5).sum())
    with pytest.raises(ValueError, match="data.sampler='balanced' is not a sampler; choose one of shuffle, class_balanced"):
        TrashDataModule(synthetic_root, sampler="balanced")
    with pytest.raises(ValueError, match="data.repeat_threshold=0"):
        TrashDataModule(synthetic_root, sampler="class_balanced", repeat_threshold=0)


# ---------------------------------------------------------------- post-processing

def test_mode3_on_a_hand_drawn_map():
    labels = torch.tensor([[0, 0, 0, 1, 1],
                           [0, 2, 0, 1, 1],
                           [0, 0, 3, 1, 1],
                           [4, 4, 3, 3, 1],
                           [4, 1, 4, 3, 3]])
    expected = torch.tensor([[0, 0, 0, 1, 1],
                             [0, 0, 0, 1, 1],   # (1, 1): 7 of its 9 say 0, the lone 2 goes
                             [0, 0, 3, 1, 1],   # (2, 2): 3 x3 beats 0 x2, 1 x2: stays 3
                             [4, 4, 3, 3, 1],   # (3, 4): its 6 in-image neighbours say 1 x3, 3 x3: a tie keeps 1
                             [4, 4, 3, 3, 3]])  # (4, 1): 4 x4 -> 4; (4, 2): 3 x3 beats 4 x2 -> 3
    np.testing.assert_array_equal(mode_filter3(labels, 5).numpy(), expected.numpy())


@pytest.mark.parametrize("window, centre", [
    ([[1, 1, 1], [1, 2, 2], [2, 2, 0]], 2),  # 1 x4 vs 2 x4, centre 2: kept (not the lower label)
    ([[1, 1, 2], [1, 0, 2], [1, 2, 2]], 0),  # 1 x4 vs 2 x4, centre 0 in neither: kept
    ([[2, 1, 2], [1, 1, 1], [2, 1, 2]], 1),  # 1 x5 vs 2 x4: 1
    ([[2, 2, 2], [2, 1, 1], [2, 1, 1]], 2),  # 2 x5 vs 1 x4: 2 replaces the centre's 1
])
def test_mode3_ties_keep_the_centre(window, centre):
    assert mode_filter3(torch.tensor(window), 3)[1, 1] == centre


def test_mode3_borders_count_only_pixels_inside():
    corner = torch.tensor([[1, 2], [2, 1]])  # every pixel sees the 4 pixels: 1 x2, 2 x2, ties everywhere
    np.testing.assert_array_equal(mode_filter3(corner, 3).numpy(), corner.numpy())


def test_crf_follows_image_edges():
    pytest.importorskip("pydensecrf.densecrf", reason="pip install pydensecrf2 (optional) to test --post crf")
    image = torch.zeros(3, 24, 24, dtype=torch.uint8)
    image[:, :, 12:] = 255  # left dark, right bright
    truth = torch.zeros(24, 24, dtype=torch.long)
    truth[:, 12:] = 1
    rng = np.random.default_rng(0)
    p_right = np.where(truth.numpy() == 1, 0.7, 0.3) + rng.uniform(-0.25, 0.25, (24, 24))  # noisy, 25% flipped
    probs = torch.from_numpy(np.stack([1 - p_right, p_right]).astype(np.float32))
    noisy = (probs.argmax(0) != truth).float().mean()
    assert noisy > 0.05 and torch.equal(dense_crf(probs, image), truth)


def test_crf_without_the_package_is_one_line(monkeypatch, tmp_path, capsys):
    from trashseg.inference.command import main as inference

    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # as if pydensecrf2 were not installed
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ValueError, match="pip install pydensecrf2"):
        check_post("crf")
    # stops before reading any checkpoint (this one does not even exist)
    assert inference(["--checkpoint", str(tmp_path / "missing.ckpt"), "--post", "crf", "--split", "val"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: --post crf needs the optional package pydensecrf2: pip install pydensecrf2"


@pytest.fixture(scope="module")
def untrained_checkpoint(synthetic_root, tmp_path_factory):
    """A checkpoint file as train.py writes it, of a small random-init model (noisy labels
    that the mode filter changes), without spending time on training."""
    from trashseg.models import build_model

    overrides = ["experiment=quickstart", f"data.root={synthetic_root}", "model.encoder_depth=3",
                 "model.decoder.decoder_channels=[16,8,8]"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)
    torch.manual_seed(0)
    model = build_model(cfg["model"], len(cfg["data"]["classes"])).eval()
    path = tmp_path_factory.mktemp("ckpt") / "best.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"cfg": cfg}}, path)
    return path


def _plain_and_mode3(ckpt, root, ann):
    """Per image (argmax, mode3 of it), computed here from the predictor directly."""
    from trashseg.inference import Predictor, load_checkpoint

    loaded = load_checkpoint(ckpt)
    predictor = Predictor([loaded])
    ds = CocoSegmentationDataset(root, ann, mode="test")
    out = []
    for i in range(len(ds)):
        plain = predictor.predict(ds[i]["image"][None])[0]
        out.append((ds[i]["file_name"], plain, mode_filter3(plain, len(loaded.classes))))
    assert any(not torch.equal(p, m) for _, p, m in out)  # the filter has something to do
    return out


def test_val_reports_the_metric_with_and_without_post_processing(untrained_checkpoint, tmp_path, capsys):
    from trashseg.inference.command import main as inference

    common = ["--checkpoint", str(untrained_checkpoint), "--split", "val", "--num-workers", "0"]
    assert inference([*common, "--out", str(tmp_path / "plain.json")]) == 0
    assert inference([*common, "--post", "mode3", "--out", str(tmp_path / "mode3.json")]) == 0
    plain, post = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("plain", "mode3"))
    assert post["post"] == "mode3" and "without post-processing" not in plain
    assert post["without post-processing"]["full resolution"] == plain["full resolution"]
    assert post["without post-processing"]["256x256"] == plain["256x256"]
    assert post["full resolution"]["mIoU"] != plain["full resolution"]["mIoU"]
    assert "--post mode3 changes full-resolution mIoU by" in capsys.readouterr().out


def test_submission_and_pseudo_labels_get_the_post_processed_labels(untrained_checkpoint, synthetic_root, tmp_path):
    from pycocotools import mask as mask_utils

    from trashseg.inference.command import main as inference
    from trashseg.inference.pseudo import main as pseudo
    from trashseg.submission import read_submission, to_submission_size

    expected = _plain_and_mode3(untrained_checkpoint, synthetic_root, "test.json")
    common = ["--checkpoint", str(untrained_checkpoint), "--split", "test", "--num-workers", "0", "--post", "mode3"]
    assert inference([*common, "--out", str(tmp_path / "sub.csv")]) == 0
    for (name, labels), (file_name, _, mode3) in zip(read_submission(tmp_path / "sub.csv"), expected):
        assert name == file_name
        np.testing.assert_array_equal(labels, to_submission_size(mode3.numpy().astype(np.uint8)))
    assert pseudo([*common, "--min-confidence", "0", "--out", str(tmp_path / "pseudo.json")]) == 0
    coco = json.loads((tmp_path / "pseudo.json").read_text())
    assert coco["info"]["post"] == "mode3"
    by_id = {c["id"]: CLASSES.index(c["name"]) for c in coco["categories"]}
    for image, (_, _, mode3) in zip(coco["images"], expected):
        rebuilt = np.zeros(mode3.shape, np.int64)
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            rebuilt[mask_utils.decode(ann["segmentation"]).astype(bool)] = by_id[ann["category_id"]]
        np.testing.assert_array_equal(rebuilt, mode3.numpy())
