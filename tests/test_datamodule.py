"""TrashDataModule: loaders from the data config, samplers, padding of mixed sizes."""

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from trashseg.data import IGNORE_INDEX, TrashDataModule
from trashseg.data import datamodule as datamodule_module
from trashseg.data.datamodule import pad_collate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def data_config(name: str, **overrides) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name=f"data/{name}")
    return {**OmegaConf.to_container(cfg.data, resolve=True), **overrides}


def augment_config(name: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name=f"augment/{name}").augment)


@pytest.mark.parametrize("name", [p.stem for p in (CONFIGS / "data").glob("*.yaml")])
def test_every_data_config_builds_a_module(name, tmp_path):
    cfg = data_config(name)
    if cfg["fold"] is not None:  # a fold config needs its fold files (trashseg.data.kfold writes them)
        (tmp_path / cfg["folds_dir"]).mkdir()
        for side in ("train", "val"):
            (tmp_path / cfg["folds_dir"] / f"fold{cfg['fold']}_{side}.json").write_text('{"images": []}')
        cfg["root"] = str(tmp_path)
    dm = TrashDataModule(**cfg, augment=augment_config("flip"))
    assert dm.classes[0] == "Background" and dm.num_classes == 11
    assert dm.sampler == "shuffle" and dm.repeat_threshold == 0.1  # the recipes are off unless an experiment says so


@pytest.mark.parametrize("name", [p.stem for p in (CONFIGS / "augment").glob("*.yaml")])
def test_every_augment_set_builds(name):
    from trashseg.data.transforms import build_transforms

    for steps in augment_config(name).values():
        build_transforms(steps)  # a bad step (also nested) would stop here with its position


def test_pad_collate_pads_image_with_zero_and_mask_with_ignore():
    small = {"image": torch.ones(3, 2, 3, dtype=torch.uint8), "mask": torch.ones(2, 3, dtype=torch.uint8),
             "orig_size": torch.tensor([2, 3])}
    tall = {"image": torch.ones(3, 4, 2, dtype=torch.uint8), "mask": torch.ones(4, 2, dtype=torch.uint8),
            "orig_size": torch.tensor([4, 2])}
    batch = pad_collate([small, tall])
    assert batch["image"].shape == (2, 3, 4, 3) and batch["mask"].shape == (2, 4, 3)
    assert batch["image"][0, :, 2:].eq(0).all() and batch["image"][0, :, :2].eq(1).all()
    assert batch["mask"][0, 2:].eq(IGNORE_INDEX).all() and batch["mask"][1, :, 2].eq(IGNORE_INDEX).all()
    assert batch["orig_size"].tolist() == [[2, 3], [4, 2]]


@pytest.fixture
def module(synthetic_root):
    cfg = data_config("synthetic", root=str(synthetic_root), num_workers=0, batch_size=4, val_batch_size=3)
    dm = TrashDataModule(**cfg, augment=augment_config("flip"))
    dm.setup("fit")
    return dm


def ids_of(loader) -> list[int]:
    return [i for batch in loader for i in batch["id"].tolist()]


def test_train_order_is_a_function_of_seed_and_epoch(module):
    loader = module.train_dataloader()
    loader.sampler.set_epoch(0)
    first = ids_of(loader)
    again = ids_of(module.train_dataloader())  # a new loader, epoch 0 again
    loader.sampler.set_epoch(1)
    assert first == again != ids_of(loader)
    assert len(first) == 24  # 24 train images, batches of 4, drop_last


def test_batches_follow_the_contract(module):
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, 64, 64)
    assert batch["mask"].dtype == torch.uint8 and batch["mask"].shape == (4, 64, 64)
    assert int(batch["mask"].max()) < 11 and len(batch["file_name"]) == 4


def test_eval_loaders_do_not_pad_under_ddp(module, monkeypatch):
    """10 val images on 2 ranks with batch 3: every image exactly once, none repeated."""
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(datamodule_module, "_world", lambda rank=rank: (2, rank))
        seen += ids_of(module.val_dataloader())
    assert sorted(seen) == sorted(module.dataset("val").ids.tolist())
    assert len(seen) == 10


def test_synthetic_data_is_generated_on_first_use(tmp_path):
    root = tmp_path / "synthetic"
    cfg = data_config("synthetic", root=str(root), num_workers=0,
                      synthetic={"n_train": 4, "n_val": 2, "n_test": 2, "size": 32, "seed": 1})
    dm = TrashDataModule(**cfg)
    dm.prepare_data()
    dm.setup("test")
    assert (root / "train.json").is_file() and len(dm.dataset("test")) == 2
    assert "mask" not in next(iter(dm.test_dataloader()))


# ---------------------------------------------------------------- shuffle order per (seed, epoch)

class Sized:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def shuffle_order(seed: int, epoch: int, n: int = 24, world: int = 1, rank: int = 0) -> list[int]:
    from trashseg.data.samplers import SeededSampler

    sampler = SeededSampler(Sized(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return [index for index, _ in sampler]


def test_no_two_seed_epoch_pairs_share_a_shuffle_order():
    # torch's DistributedSampler seeds with seed + epoch: seed 0's epoch 1 was seed 1's epoch 0
    assert shuffle_order(0, 1) != shuffle_order(1, 0)
    orders = {(seed, epoch): tuple(shuffle_order(seed, epoch)) for seed in range(4) for epoch in range(4)}
    assert len(set(orders.values())) == 16
    assert all(sorted(order) == list(range(24)) for order in orders.values())


def test_shuffle_order_is_the_same_for_every_instance_and_shards_like_ddp():
    assert shuffle_order(3, 2) == shuffle_order(3, 2)
    whole = shuffle_order(3, 2, n=10)
    shards = [shuffle_order(3, 2, n=10, world=3, rank=rank) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # 10 padded to 12 from the start of the list
    padded = whole + whole[:2]
    assert [shards[i % 3][i // 3] for i in range(12)] == padded  # rank r takes every 3rd from r
    assert set().union(*map(set, shards)) == set(range(10))
