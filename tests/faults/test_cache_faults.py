"""A mask cache that cannot be written (a full disk, a read-only folder) never stops training: one
warning line, training goes on uncached, nothing half-written is left (docs/faults.md)."""

import errno
import pathlib
import shutil
import subprocess
import warnings
from contextlib import contextmanager

import numpy as np
import pytest

from faultlib import explain, small_config, temp_files
from trashseg.data import CocoSegmentationDataset
from trashseg.data import dataset as dataset_module
from trashseg.data.cache import CacheWriteWarning
from trashseg.training.run import train

BATTERY_AND_CLOTHING = {"p": 1.0, "max_objects": 1, "scale": [1.0, 1.0], "class_weights": {"Battery": 1, "Clothing": 1}}


def cache_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, CacheWriteWarning)]


@contextmanager
def disk_fills_after(monkeypatch, folder, writes):
    """Writes under `folder` succeed `writes` times; then each one writes half its bytes and fails
    with ENOSPC, as a full disk does. Yields the number of failed attempts."""
    real, calls = pathlib.Path.write_bytes, {"n": 0, "failed": 0}

    def write_bytes(self, data):
        if folder not in self.parents:
            return real(self, data)
        calls["n"] += 1
        if calls["n"] <= writes:
            return real(self, data)
        calls["failed"] += 1
        real(self, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(pathlib.Path, "write_bytes", write_bytes)
        yield calls


def test_a_disk_that_fills_while_caching_masks_warns_once_and_training_goes_on(synthetic_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    run_dir = tmp_path / "runs" / "quickstart" / "full"
    cfg = small_config(synthetic_root, tmp_path / "runs", "trainer.max_epochs=1", f"data.cache_dir={cache}")
    with disk_fills_after(monkeypatch, cache, writes=4) as calls, warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        train(cfg, run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # the epoch and its validation ran
    [line] = cache_warnings(record)
    assert "\n" not in line and str(cache) in line and "No space left" in line and "data.cache_dir" in line
    assert calls["failed"] == 1  # after the first failure the run stopped writing to the cache
    assert temp_files(cache) == []
    # what the cache holds is whole: a dataset with a working disk reads it and agrees with rasterising
    cached = CocoSegmentationDataset(synthetic_root, "train.json", cache_dir=cache)
    fresh = CocoSegmentationDataset(synthetic_root, "train.json", cache_dir=False)
    for i in range(len(fresh)):
        np.testing.assert_array_equal(cached.mask(i), fresh.mask(i))


def test_copy_paste_with_a_full_disk_keeps_its_objects_in_memory(synthetic_root, tmp_path, monkeypatch):
    working = CocoSegmentationDataset(synthetic_root, "train.json", cache_dir=tmp_path / "ok", copy_paste=BATTERY_AND_CLOTHING)
    cache = tmp_path / "full"
    with disk_fills_after(monkeypatch, cache, writes=3), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        full = CocoSegmentationDataset(synthetic_root, "train.json", cache_dir=cache, copy_paste=BATTERY_AND_CLOTHING)
        items = [full[(i, 7)] for i in range(4)]
    assert len(cache_warnings(record)) == 1 and temp_files(cache) == []
    assert any(isinstance(part, np.ndarray) for part in full.copy_paste.pool.parts)  # those it could not write
    np.testing.assert_array_equal(full.copy_paste.pool.meta, working.copy_paste.pool.meta)
    for i, item in enumerate(items):  # the same pastes as with a working cache
        expected = working[(i, 7)]
        assert all(np.array_equal(item[k], expected[k]) for k in ("image", "mask"))


@contextmanager
def read_only(folder):
    """`folder` and everything under it made read-only for real: by its mode bits, and for root (who
    ignores them) by the immutable attribute. Skips where neither holds (root without CAP_LINUX_IMMUTABLE)."""
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    modes = {p: p.stat().st_mode for p in folders}
    for p in folders:
        p.chmod(0o555)
    immutable = False
    try:
        if _writable(folder):
            immutable = subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True).returncode == 0 \
                if shutil.which("chattr") else False
            if not immutable or _writable(folder):
                pytest.skip("cannot make a read-only folder here (root without the immutable attribute)")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-R", "-i", str(folder)], check=True)
        for p, mode in modes.items():
            p.chmod(mode)


def _writable(folder) -> bool:
    probe = folder / "probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return False
    probe.unlink()
    return True


def test_a_read_only_cache_folder_is_read_but_never_written(synthetic_root, tmp_path, monkeypatch):
    """A warm cache on a read-only folder still serves its masks; the masks it lacks are rasterised every
    time; one warning, before any item is loaded."""
    cache = tmp_path / "cache"
    warm = CocoSegmentationDataset(synthetic_root, "val.json", cache_dir=cache)  # 10 images
    [warm.mask(i) for i in range(len(warm))]
    entries = sorted(cache.rglob("*"))
    rasterised = []
    real = dataset_module.rasterize
    monkeypatch.setattr(dataset_module, "rasterize", lambda objects, *a: rasterised.append(objects) or real(objects, *a))
    with read_only(cache), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = CocoSegmentationDataset(synthetic_root, "train_all.json", cache_dir=cache)  # val's 10 + train's 24
        [line] = cache_warnings(record)
        masks = [ds.mask(i) for i in range(len(ds))]
        assert len(cache_warnings(record)) == 1
    assert str(cache) in line and "cannot be written" in line
    assert len(rasterised) == len(ds) - len(warm) == 24  # val's masks came from the cache
    assert sorted(cache.rglob("*")) == entries  # nothing written, nothing left
    fresh = CocoSegmentationDataset(synthetic_root, "train_all.json", cache_dir=False)
    assert all(np.array_equal(m, fresh.mask(i)) for i, m in enumerate(masks))


def test_train_py_with_a_cache_folder_it_cannot_create_trains_with_one_warning_line(runs, tmp_path):
    """As under a read-only ~/.cache: the cache folder cannot be made (here its parent is a file)."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    run = runs("cache")
    result = run.train("one", "trainer.max_epochs=1", f"data.cache_dir={blocker / 'cache'}")
    assert result.returncode == 0, explain(result)
    lines = [line for line in result.stderr.splitlines() if "cannot be written" in line]
    assert len(lines) == 1 and "CacheWriteWarning" in lines[0] and "data.cache_dir" in lines[0], explain(result)
    assert (run.root / "runs" / "quickstart" / "one" / "checkpoints" / "best.ckpt").is_file()
    assert blocker.read_text() == ""
