"""What every Kestrel data module shares: split names, parsed splits cached by stage, file checks, loaders, and
the evaluator of a split."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm import tqdm

from ..evaluation import Evaluator
from .images import check_files_exist, check_image_header, list_images
from .masks import read_mask

# The splits each Trainer stage (``trainer.state.fn``) reads.
STAGES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
DEFAULT_SPLITS = {"coco": ("train2017", "val2017"), "voc": ("train", "val")}


class Split(Protocol):
    """What the base needs of a parsed split."""

    description: str

    @property
    def files(self) -> list[Path]: ...

    @property
    def vocabulary(self) -> tuple:
        """What the labels mean (class names and ids, keypoint names): equal on every split."""


#: the smallest image side a network takes: the coarsest feature level of every backbone is 1/32 of it
MIN_IMAGE_SIDE = 32


def check_size(value: Any, option: str) -> int:
    """``value`` if it is a whole number of pixels of at least :data:`MIN_IMAGE_SIDE`; else a ``ValueError``
    naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_IMAGE_SIDE:
        raise ValueError(f"--{option} is an image side in pixels, at least {MIN_IMAGE_SIDE}; got {value!r}")
    return value


def process_rank() -> int:
    """This process's rank in a distributed run (0 outside one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream (the dataset's or its albumentations pipeline's).

    The worker seed comes from torch's generator, seeded alike on every process of a distributed run,
    so the process rank is mixed in: otherwise worker ``w`` of every GPU would draw the same crops. It
    seeds torch's, Python's and NumPy's generators in the worker too, which torchvision's transforms and
    any user code draw from.
    """
    info = get_worker_info()
    seed_draws(info.dataset, info.seed)


def seed_draws(dataset: Dataset, base: int) -> None:
    """Seed every source a loader draws from — torch's generator (torchvision's IoU crop and zoom-out),
    Python's, NumPy's, and the dataset's (or its albumentations pipeline's) — from ``base`` and the rank."""
    seed = int(np.random.SeedSequence([base % 2**63, process_rank()]).generate_state(1)[0])
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    for owner in (dataset, getattr(dataset, "transform", None)):
        if hasattr(owner, "set_random_seed"):
            owner.set_random_seed(seed)
            return


def check_split(split: Any, what: str) -> None:
    """One pass over a split's image headers (empty, undecodable, another size than annotated) and its
    masks (decoded: palette or greyscale, class indices in range, the image's size), with a progress bar,
    so that a bad file fails the run before training starts. Raises ``ValueError`` naming the bad files."""
    records = getattr(split, "records", None) or getattr(split, "images", None) or []
    problems = []
    for record in tqdm(records, desc=f"checking {what}", unit="image", disable=None, leave=False):
        try:
            size = check_image_header(Path(record.file), getattr(record, "width", None),
                                      getattr(record, "height", None))
            mask_file = getattr(record, "mask_file", None)
            if mask_file is not None:
                mask = read_mask(mask_file, len(split.class_names) + 1)
                if mask.shape[::-1] != size:
                    raise ValueError(f"mask {str(mask_file)!r} is {mask.shape[1]}x{mask.shape[0]} pixels, its image "
                                     f"{str(record.file)!r} {size[0]}x{size[1]}")
        except (ValueError, FileNotFoundError) as err:
            problems.append(str(err))
    if problems:
        more = f" (and {len(problems) - 1} more bad file(s) in {what})" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)


def collate(batch: Sequence[tuple]) -> tuple:
    """Images stacked into one uint8 batch when they share a size (training crops), else a list (images
    at their own sizes, for evaluation); targets (a dict per image) as a list."""
    images, targets = zip(*batch)
    if all(image.shape == images[0].shape for image in images):
        images = torch.stack(images)
    else:
        images = list(images)
    return images, list(targets)


class KestrelDataModule(pl.LightningDataModule):
    """Base of the data modules: subclasses parse a named split (:meth:`load_split`), a folder of images
    to predict on (:meth:`folder_split`), wrap a split in a dataset (:meth:`dataset`) and build the
    evaluator of a split (:meth:`evaluator`).

    ``train`` reads ``train_split``, ``val`` ``val_split``, ``test`` and ``predict`` ``test_split``
    (``val_split`` unless given), ``predict`` with ``predict_dir`` that folder. Every split must mean
    the same by its labels (its ``vocabulary``). Building a data module reads at most what the model is
    told of the data (class or keypoint names, from the validation split's annotation file); the splits
    are parsed in :meth:`setup`, and :meth:`prepare_data` (once, before setup) checks every file the
    stage reads, so that a missing or bad file fails the run before training starts.

    Items are ``(image uint8 (3, H, W), target)``; a target is a dict that holds the labels and what
    evaluation and prediction need to map outputs back: ``image_id`` (the data set's own id), ``file``
    and, for pose crops, their geometry. In a distributed run the evaluation and prediction loaders give
    each process its share of the images without repeating any (Lightning's
    ``UnrepeatedDistributedSampler``), so the evaluators' gathered numbers equal one process's.

    Args:
        format: ``"coco"`` or ``"voc"``: the split names default to COCO's ``train2017`` / ``val2017``
            or VOC's ``train`` / ``val``.
        train_split: The training split's name.
        val_split: The validation split's name.
        test_split: The split ``test`` (and ``predict``) use.
        predict_dir: A folder of images for ``predict``.
        batch_size: Images per batch and device.
        num_workers: Loader processes per device.
        pin_memory: Page-locked batches (used when a GPU is present).
    """

    def __init__(self, format: str, train_split: str | None, val_split: str | None, test_split: str | None,
                 predict_dir: str | None, batch_size: int, num_workers: int, pin_memory: bool,
                 check_files: bool = True):
        super().__init__()
        self.check_files = check_files
        if format not in DEFAULT_SPLITS:
            raise ValueError(f"data.format must be one of {sorted(DEFAULT_SPLITS)}, got {format!r}")
        train_default, val_default = DEFAULT_SPLITS[format]
        self.format = format
        self.train_split = train_split or train_default
        self.val_split = val_split or val_default
        self.test_split = test_split or self.val_split
        self.predict_dir = predict_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._splits: dict[str, Any] = {}
        self._vocabulary: tuple | None = None

    def load_split(self, stage: str, name: str) -> Split:
        raise NotImplementedError

    def folder_split(self, files: list[Path]) -> Split:
        raise NotImplementedError

    def dataset(self, split: Any, train: bool) -> Dataset:
        raise NotImplementedError

    def split_name(self, stage: str) -> str:
        return {"train": self.train_split, "val": self.val_split}.get(stage, self.test_split)

    def split(self, stage: str) -> Any:
        """The parsed split a stage (``train``, ``val``, ``test``, ``predict``) uses, parsed once."""
        if stage not in self._splits:
            if stage == "predict" and self.predict_dir:
                split = self.folder_split(list_images(self.predict_dir))
            else:
                split = self.load_split(stage, self.split_name(stage))
                if self._vocabulary is None:
                    self._vocabulary = split.vocabulary
                elif split.vocabulary != self._vocabulary:
                    raise ValueError(
                        f"{split.description} labels {split.vocabulary}, another split of this data "
                        f"{self._vocabulary}: every split must name the same classes (or keypoints)"
                    )
            self._splits[stage] = split
        return self._splits[stage]

    def check(self, stage: str) -> None:
        """Check the files of the splits a Trainer stage (``fit``, ``validate``, ``test``, ``predict``) reads: that
        every image exists and, with ``check_files``, that every image header and mask is sound. Raises
        ``FileNotFoundError`` / ``ValueError`` naming the bad files."""
        for name in STAGES[stage]:
            split = self.split(name)
            check_files_exist(split.files, split.description)
            if self.check_files:
                check_split(split, split.description)

    def prepare_data(self) -> None:
        """The file checks of :meth:`check`, for the stage the trainer runs (Lightning calls this once per node,
        before :meth:`setup`)."""
        self.check(self.trainer.state.fn.value if self.trainer is not None and self.trainer.state.fn else "fit")

    def setup(self, stage: str) -> None:
        for s in STAGES[stage]:
            self.split(s)

    def evaluator(self, stage: str, **options) -> Evaluator:
        """The evaluator of a split (``val`` or ``test``) with its ground truth; ``options`` are the task's
        evaluation settings (pose: ``sigmas``, ``keypoint_score_threshold``, ``nms_threshold``)."""
        raise NotImplementedError

    def _loader(self, stage: str, train: bool, drop_last: bool = False) -> DataLoader:
        dataset = self.dataset(self.split(stage), train)
        if train and self.num_workers == 0 and process_rank() > 0:
            # no workers: this process draws the augmentations, its generators seeded alike on every rank
            seed_draws(dataset, torch.initial_seed())
        sampler = None
        if not train and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)  # Lightning keeps a DistributedSampler
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            sampler=sampler,
            drop_last=drop_last and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker,
        )

    def train_dataloader(self) -> DataLoader:
        # a batch of one breaks batch norm on 1x1 maps: the last, partial batch is dropped
        return self._loader("train", train=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", train=False)
