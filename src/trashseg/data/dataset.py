"""The COCO trash-segmentation dataset: image + semantic mask per item."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import MaskCache, default_cache_root, mask_key
from .classes import CLASSES
from .coco import label_map, read_coco
from .copy_paste import CopyPaste
from .image_io import read_rgb
from .masks import SegObject, object_masks, rasterize, validate_policy
from .packed import PackedList
from .transforms import build_transforms

MODES = ("train", "val", "test")


class CocoSegmentationDataset(Dataset):
    """Items are dicts: `image` (uint8 3 x H x W), `mask` (uint8 H x W, not in test mode),
    `id`, `file_name`, `orig_size` (H, W before transforms); see docs/CONTRACTS.md.

    Images are indexed by position in the JSON's image list, so ids need not be contiguous.
    Masks are rasterised once and then read from the mask cache (`cache_dir=False` disables it).
    `file_name` is relative to `root`, or to the annotation file's folder with
    `images_relative_to="ann"`. `copy_paste` (train mode only): an `augment.copy_paste` mapping,
    or a `CopyPaste` shared with another dataset; it pastes before the albumentations steps.
    """

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path,
        classes: Sequence[str] = CLASSES,
        overlap: str = "area_desc",
        transforms: Callable | Sequence[Mapping] | None = None,
        mode: str = "train",
        crowd: str = "label",
        cache_dir: str | Path | bool | None = None,
        images_relative_to: str = "root",
        copy_paste: Mapping | CopyPaste | None = None,
    ):
        validate_policy(overlap, crowd)
        if mode not in MODES:
            raise ValueError(f"unknown dataset mode {mode!r}; choose one of {MODES}")
        if images_relative_to not in ("root", "ann"):
            raise ValueError(f"images_relative_to must be 'root' or 'ann', not {images_relative_to!r}")
        self.root = Path(root)
        self.ann_path = self.root / ann_file
        # The competition's file_name is relative to the data root; other sets (TrashCan)
        # name images relative to the annotation file's folder.
        self.image_root = self.root if images_relative_to == "root" else self.ann_path.parent
        self.classes = list(classes)
        self.overlap, self.crowd, self.mode = overlap, crowd, mode
        self.transforms = build_transforms(transforms) if isinstance(transforms, Sequence) else transforms

        coco = read_coco(self.ann_path)
        self._index_images(coco["images"])
        self.cache: MaskCache | None = None
        self.mask_keys: np.ndarray | None = None  # per image, what its cached mask is stored under
        self._objects: PackedList | None = None
        # Which classes each image holds (n_images x n_classes), from the annotations alone:
        # what class-balanced sampling and the copy-paste pool select images by.
        self.label_presence = np.zeros((len(self.ids), len(self.classes)), dtype=bool)
        if mode != "test":
            per_image = self._group_objects(coco)
            for i, objects in per_image.items():
                labels = [o.label for o in objects if not (o.iscrowd and crowd == "ignore")]
                self.label_presence[i, labels] = True
            if cache_dir is not False:
                self.cache = MaskCache(cache_dir or default_cache_root())
                self.mask_keys = np.array([mask_key(per_image.get(i, []), height, width, self.classes, overlap, crowd)
                                           for i, (height, width) in enumerate(self.sizes)])
            self._objects = self._pack_objects(per_image, only_uncached=self.cache is not None)
        if copy_paste is not None and mode != "train":
            raise ValueError(f"copy-paste is a training augmentation; {self.ann_path.name} is loaded in {mode} mode")
        self.copy_paste = CopyPaste.from_source(copy_paste, self) if isinstance(copy_paste, Mapping) else copy_paste

    def _index_images(self, images: list[dict]) -> None:
        self.ids = np.array([im["id"] for im in images], dtype=np.int64)
        if len(np.unique(self.ids)) != len(self.ids):
            dup = [int(i) for i in np.unique(self.ids) if (self.ids == i).sum() > 1][:5]
            raise ValueError(f"{self.ann_path}: duplicate image ids {dup}; run python -m trashseg.data.check")
        self.file_names = np.array([im["file_name"] for im in images])  # numpy strings: no refcounts in workers
        self.sizes = np.array([(im["height"], im["width"]) for im in images], dtype=np.int64)

    def _group_objects(self, coco: dict) -> dict[int, list[SegObject]]:
        """Image position -> its SegObjects, in file order."""
        labels = label_map(coco.get("categories", []), self.classes)
        position = {int(image_id): i for i, image_id in enumerate(self.ids)}
        per_image: dict[int, list[SegObject]] = defaultdict(list)
        for ann in coco.get("annotations", []):
            if ann["image_id"] not in position:
                raise ValueError(f"{self.ann_path}: annotation {ann.get('id')} refers to unknown image id {ann['image_id']}")
            if ann["category_id"] not in labels:
                raise ValueError(f"{self.ann_path}: annotation {ann.get('id')} has category id {ann['category_id']} missing from 'categories'")
            obj = SegObject(labels[ann["category_id"]], ann["segmentation"], bool(ann.get("iscrowd", 0)))
            per_image[position[ann["image_id"]]].append(obj)
        return per_image

    def _pack_objects(self, per_image: dict[int, list[SegObject]], only_uncached: bool) -> PackedList:
        """Per image its SegObjects; with a cache, only for images whose mask is not on disk yet."""
        skip = {i for i, key in enumerate(self.mask_keys) if self.cache.has_mask(key)} if only_uncached else set()
        return PackedList(None if i in skip else per_image.get(i, []) for i in range(len(self.ids)))

    def __len__(self) -> int:
        return len(self.ids)

    def objects(self, index: int) -> list[SegObject]:
        """The image's annotations (re-reading the JSON if the warm cache let us skip them)."""
        objects = self._objects[index]
        if objects is None:
            coco = read_coco(self.ann_path)
            self._objects = self._pack_objects(self._group_objects(coco), only_uncached=False)
            objects = self._objects[index]
        return objects

    def object_masks(self, index: int) -> list[tuple[int, np.ndarray]]:
        """Each object's own (label, 0/1 mask) at the original size, e.g. for copy-paste."""
        height, width = self.sizes[index]
        return object_masks(self.objects(index), int(height), int(width))

    def mask(self, index: int) -> np.ndarray:
        """The semantic mask at the original size: from the cache, else rasterised (and cached)."""
        if self.cache is not None:
            cached = self.cache.load_mask(self.mask_keys[index])
            if cached is not None:
                return cached
        height, width = self.sizes[index]
        mask = rasterize(self.objects(index), int(height), int(width), self.overlap, self.crowd)
        if self.cache is not None:
            self.cache.save_mask(self.mask_keys[index], mask)
        return mask

    def read_image(self, index: int) -> torch.Tensor:
        """uint8 3 x H x W, checked against the size the JSON gives."""
        path = self.image_root / str(self.file_names[index])
        image = read_rgb(path)
        height, width = self.sizes[index]
        if image.shape[1:] != (height, width):
            raise ValueError(
                f"{path} is {image.shape[2]}x{image.shape[1]} but {self.ann_path.name} says {width}x{height}; "
                "fix the annotation file (python -m trashseg.data.check lists all such images)"
            )
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """`key`: an index, or (index, augmentation seed) from the training sampler."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.read_image(index)
        mask = None if self.mode == "test" else self.mask(index)
        if self.transforms is not None or self.copy_paste is not None:
            image, mask = self._augment(image, mask, seed)
        item = {
            "image": image,
            "id": int(self.ids[index]),
            "file_name": str(self.file_names[index]),
            "orig_size": torch.from_numpy(self.sizes[index].copy()),
        }
        if mask is not None:
            item["mask"] = torch.from_numpy(mask)
        return item

    def _augment(self, image: torch.Tensor, mask: np.ndarray | None, seed: int | None) -> tuple[torch.Tensor, np.ndarray | None]:
        # A seed per item: albumentations' own state would repeat in every DataLoader worker.
        # Without one from the sampler, draw it from torch, which DataLoader seeds per worker.
        seed = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        if self.copy_paste is not None:  # before the geometry, so pasted objects are cropped, flipped, ... with the scene
            self.copy_paste(hwc, mask, seed)
        if self.transforms is None:
            return torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))), mask
        self.transforms.set_random_seed(seed)
        out = self.transforms(image=hwc) if mask is None else self.transforms(image=hwc, mask=mask)
        chw = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        return chw, (None if mask is None else np.ascontiguousarray(out["mask"]))
