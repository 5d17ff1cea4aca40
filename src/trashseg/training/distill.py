"""Knowledge distillation (Hinton et al. 2015): a student learns from frozen teacher checkpoints.

    loss = (1 - alpha) x the usual loss on labels + alpha x T^2 x KL(p_teacher || p_student)

with p = softmax(logits / T) per pixel, the KL summed over classes and averaged over the pixels
that count: pixels labelled 255 (padding, augmentation borders, ignored crowd regions) are in
neither term. T^2 keeps the KL term's gradients on the scale of the label loss's as T grows.
Several teachers are averaged in probability space (weighted, over TTA views too), as inference
averages an ensemble. Each teacher sees exactly the augmented batch the student sees, through
its own checkpoint's normalisation.

Teachers are plain attributes, not registered submodules: they are neither in the student's
checkpoint (only their paths are, in the run config) nor moved, put in train mode or wrapped
by DDP with the student; every process runs its own copy, in eval mode, without gradients.

`unlabelled` sources (e.g. the test images) add, every step, a batch on which only the KL term
counts; their order and augmentations are a function of (seed, position), and the position
travels in the checkpoint, so a resumed run draws what an uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Sampler

from trashseg.checkpoint import NormalisedNet, load_network
from trashseg.data.classes import IGNORE_INDEX
from trashseg.data.datamodule import SeededConcatDataset, pad_collate
from trashseg.data.dataset import CocoSegmentationDataset
from trashseg.memory_format import to_channels_last
from trashseg.tta import TTA_MODES, tta_views

from .config_keys import unknown_key_message

KEYS = ("teacher", "temperature", "alpha", "tta", "weights", "unlabelled", "unlabelled_batch_size")
SOURCE_KEYS = ("ann", "root", "images_relative_to")
EXAMPLE = "'distill.teacher=[runs/<experiment>/<run>/checkpoints/best.ckpt]'"


def check_distill_config(cfg: Mapping) -> dict:
    """The `distill` block with its defaults filled in; a ValueError of one line for a bad key or value."""
    for key in cfg:
        if key not in KEYS:
            raise ValueError(unknown_key_message(key, KEYS, "distill."))
    teachers = cfg.get("teacher") or []
    teachers = [teachers] if isinstance(teachers, str) else list(teachers)
    if not teachers or not all(isinstance(t, str) for t in teachers):
        raise ValueError(f"distill.teacher={cfg.get('teacher')!r}: give one or more checkpoint paths, e.g. {EXAMPLE}")
    temperature, alpha = cfg.get("temperature", 2.0), cfg.get("alpha", 0.5)
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"distill.temperature={temperature!r}: a number above 0, e.g. 2 (higher: softer teacher targets)")
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"distill.alpha={alpha!r}: a weight in [0, 1] of the KL term (1 - alpha weighs the label loss)")
    tta = cfg.get("tta") or "none"
    if tta not in TTA_MODES:
        raise ValueError(f"distill.tta={tta!r}: choose one of {', '.join(TTA_MODES)}")
    weights = cfg.get("weights")
    if weights is not None and (not isinstance(weights, Sequence) or len(weights) != len(teachers)
                                or not all(isinstance(w, (int, float)) and w >= 0 for w in weights) or not sum(weights)):
        raise ValueError(f"distill.weights={weights!r}: one non-negative weight per teacher ({len(teachers)}), "
                         "not all zero; or null for equal weights")
    sources = list(cfg.get("unlabelled") or [])
    for i, source in enumerate(sources):
        if not isinstance(source, Mapping) or "ann" not in source or set(source) - set(SOURCE_KEYS):
            raise ValueError(f"distill.unlabelled[{i}] = {source!r}: each source takes 'ann' and optionally root, "
                             "images_relative_to, e.g. [{ann: test.json}]")
    batch = cfg.get("unlabelled_batch_size")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"distill.unlabelled_batch_size={batch!r}: a positive number of images, or null for data.batch_size")
    return {"teacher": teachers, "temperature": float(temperature), "alpha": float(alpha), "tta": tta,
            "weights": [float(w) for w in weights] if weights is not None else [1.0] * len(teachers),
            "unlabelled": [dict(s) for s in sources], "unlabelled_batch_size": batch}


def load_teacher(path: str | Path, classes: Sequence[str]) -> NormalisedNet:
    """The checkpoint's network behind its own normalisation, frozen and in eval mode; it computes in
    the student's precision (the training step's autocast) and runs channels_last on CUDA (Distiller.to)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"distill.teacher: checkpoint not found: {path}; give checkpoints train.py wrote, "
                                f"e.g. {EXAMPLE}")
    model, cfg = load_network(path)
    if list(cfg["data"]["classes"]) != list(classes):
        raise ValueError(f"distill.teacher {path} was trained on classes {list(cfg['data']['classes'])} but this run's "
                         f"data.classes is {list(classes)}; distil only from teachers trained on the same class list")
    model.requires_grad_(False)
    return NormalisedNet(model, cfg, "cpu", own_precision=False, channels_last=False)


def pixel_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """N x H x W: KL(teacher || softmax(student_logits / T)), summed over classes (0 log 0 = 0)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    return (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_student).sum(1)


def kd_loss(parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], temperature: float) -> torch.Tensor:
    """T^2 x the mean KL over the valid pixels of all `(student_logits, teacher_probs, valid)` parts
    (one pixel, one vote, whichever batch it is in); zero, still attached to the graph, when none is valid."""
    total = count = 0
    for student_logits, teacher_probs, valid in parts:
        kl = pixel_kl(student_logits, teacher_probs, temperature)
        total = total + kl.where(valid, 0.0).sum()  # not kl[valid]: with no valid pixel the graph stays whole
        count = count + int(valid.sum())
    return temperature**2 * total / max(count, 1)


def build_distillation(cfg: Mapping, classes: Sequence[str]) -> tuple[Distiller | None, UnlabelledStream | None]:
    """From a run config: the Distiller (None without a `distill` block) and the stream of its
    unlabelled sources (None without any). Teachers and annotation files are read now, so a bad
    path or class list stops before training starts."""
    if not cfg.get("distill"):
        return None, None
    distill = check_distill_config(cfg["distill"])
    stream = None
    if distill["unlabelled"]:
        batch_size = distill["unlabelled_batch_size"] or cfg["data"]["batch_size"]
        stream = UnlabelledStream(distill["unlabelled"], cfg["data"], cfg["augment"]["train"], batch_size)
    return Distiller(distill, classes), stream


class Distiller:
    """The teachers' softened probabilities for a batch and the combined loss. Not an nn.Module on
    purpose: see the module docstring."""

    def __init__(self, cfg: Mapping, classes: Sequence[str]):
        """`cfg`: a `distill` block (checked here)."""
        cfg = check_distill_config(cfg)
        self.temperature, self.alpha = cfg["temperature"], cfg["alpha"]
        self.teachers = [load_teacher(path, classes) for path in cfg["teacher"]]
        total = sum(cfg["weights"])
        self.weights = [w / total for w in cfg["weights"]]
        self.views = tta_views(cfg["tta"], "distill.tta")
        self.device = torch.device("cpu")

    def __deepcopy__(self, memo: dict) -> Distiller:
        # Frozen teachers are shared, not copied: a copy of the student (the EMA / SWA average is a
        # deepcopy of the whole LightningModule) needs no second set of teachers on the device.
        return self

    def to(self, device: torch.device) -> Distiller:
        if device != self.device:
            for teacher in self.teachers:
                teacher.to(device)
                if device.type == "cuda":
                    to_channels_last(teacher.model)
                    teacher.channels_last = True
            self.device = device
        return self

    @torch.no_grad()
    def soft_targets(self, images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """uint8 N x 3 x H x W -> N x C x size teacher probabilities at temperature T, the weighted
        mean over teachers and TTA views; logits of another size are resized bilinearly first."""
        self.to(images.device)
        out = None
        for teacher, weight in zip(self.teachers, self.weights):
            for forward, inverse in self.views:  # flips and rotations: they commute with the normalisation
                logits = inverse(teacher(forward(images)))
                if logits.shape[-2:] != tuple(size):
                    logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
                p = (logits / self.temperature).softmax(1) * (weight / len(self.views))
                out = p if out is None else out + p
        return out

    def kd(self, parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """`parts`: (uint8 images, student logits, valid-pixel mask) per batch -> the KL term (x T^2)."""
        return kd_loss([(logits, self.soft_targets(images, logits.shape[-2:]), valid)
                        for images, logits, valid in parts], self.temperature)

    def combine(self, label_loss: torch.Tensor, kd: torch.Tensor) -> torch.Tensor:
        return (1 - self.alpha) * label_loss + self.alpha * kd


class StreamKeys(Sampler):
    """An endless stream of (index, augmentation seed) keys for one process, from item `start` on.
    Pass p over the data is a permutation drawn from (seed, p), padded to a multiple of `world`
    and dealt out like a DistributedSampler; an item's seed is a function of (seed, p, index)."""

    SALT = 0x4B44  # "KD": other draws than the main train sampler's from the same seed

    def __init__(self, size: int, seed: int, start: int = 0, world: int = 1, rank: int = 0):
        self.size, self.seed, self.start, self.world, self.rank = size, seed, start, world, rank
        self.per_rank = math.ceil(size / world)

    def keys_of_pass(self, p: int) -> list[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.SALT, p]).permutation(self.size)
        order = np.resize(order, self.per_rank * self.world)[self.rank :: self.world]  # resize repeats from the start
        return [(int(i), int(np.random.SeedSequence([self.seed, self.SALT, p, int(i)]).generate_state(1)[0] >> 1))
                for i in order]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        p, offset = divmod(self.start, self.per_rank)
        while True:
            yield from self.keys_of_pass(p)[offset:]
            p, offset = p + 1, 0


def _worker_init(_worker_id: int) -> None:
    cv2.setNumThreads(0)  # one process per worker: OpenCV's own threads would only oversubscribe the cores


class UnlabelledStream:
    """Batches of unlabelled images, augmented like the training images: `next()` gives uint8
    images and the mask of the pixels that count (not padding, not an augmentation border).

    Each source is read in train mode: an image without annotations rasterises to all zeros,
    and the transforms and the padding collate mark borders and padding 255 exactly as in the
    labelled batches. Only that 255 is used, never the labels, so a labelled file read here is
    unlabelled too."""

    def __init__(self, sources: Sequence[Mapping], data: Mapping, transforms: Sequence[Mapping], batch_size: int):
        self.dataset = SeededConcatDataset([self._source(i, s, data, transforms) for i, s in enumerate(sources)])
        if not len(self.dataset):
            raise ValueError("distill.unlabelled holds no images; point it at an annotation file with images")
        self.seed, self.batch_size, self.num_workers = int(data.get("seed", 0)), batch_size, int(data["num_workers"])
        self.position = 0  # images of the stream this process has trained on
        self._batches: Iterator[dict] | None = None

    @staticmethod
    def _source(i: int, source: Mapping, data: Mapping, transforms: Sequence[Mapping]) -> CocoSegmentationDataset:
        root = source.get("root") or data["root"]
        if not (Path(root) / source["ann"]).is_file():
            raise FileNotFoundError(f"distill.unlabelled[{i}]: annotation file not found: {Path(root) / source['ann']}; "
                                    "'ann' is relative to the source's root (default data.root), e.g. [{ann: test.json}]")
        return CocoSegmentationDataset(root, source["ann"], classes=data["classes"], transforms=transforms, mode="train",
                                       crowd="label", cache_dir=False,
                                       images_relative_to=source.get("images_relative_to") or data["images_relative_to"])

    def next(self, world: int = 1, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None:  # lazily: from the position a resumed run restored
            keys = StreamKeys(len(self.dataset), self.seed, self.position, world, rank)
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=keys, num_workers=self.num_workers,
                                collate_fn=pad_collate, worker_init_fn=_worker_init,
                                generator=torch.Generator().manual_seed(self.seed))  # not the global RNG: resume draws alike
            self._batches = iter(loader)
        batch = next(self._batches)
        self.position += len(batch["image"])
        return batch["image"], batch["mask"] != IGNORE_INDEX

    def __deepcopy__(self, memo: dict) -> UnlabelledStream:
        return self  # one stream per process: a copy of the student (an average) never trains on it

    def close(self) -> None:
        """Stops the loader's workers; the next `next()` starts again from `position`."""
        self._batches = None
