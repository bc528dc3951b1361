"""What every Kestrel data module shares: parsed splits cached by stage, and the loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, get_worker_info

STAGES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream (the dataset's or its albumentations pipeline's).

    The worker seed comes from torch's generator, seeded alike on every process of a distributed run,
    so the process rank is mixed in: otherwise worker ``w`` of every GPU would draw the same crops.
    """
    info = get_worker_info()
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    seed = int(np.random.SeedSequence([info.seed % 2**63, rank]).generate_state(1)[0])
    for owner in (info.dataset, getattr(info.dataset, "transform", None)):
        if hasattr(owner, "set_random_seed"):
            owner.set_random_seed(seed)
            return


class KestrelDataModule(pl.LightningDataModule):
    """Base of the data modules: subclasses parse a split (:meth:`load_split`) and wrap it (:meth:`dataset`).

    Args:
        batch_size: Images per batch and device.
        num_workers: Loader processes per device.
        pin_memory: Page-locked batches (used when a GPU is present).
        collate: How a batch is assembled.
    """

    def __init__(self, batch_size: int, num_workers: int, pin_memory: bool, collate: Callable[[list], Any]):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.collate = collate
        self._splits: dict[str, Any] = {}

    def load_split(self, stage: str) -> Any:
        raise NotImplementedError

    def dataset(self, split: Any, train: bool) -> Dataset:
        raise NotImplementedError

    def split(self, stage: str) -> Any:
        """The parsed split a stage (``train``, ``val``, ``test``, ``predict``) uses, parsed once."""
        if stage not in self._splits:
            self._splits[stage] = self.load_split(stage)
        return self._splits[stage]

    def setup(self, stage: str) -> None:
        for s in STAGES[stage]:
            self.split(s)

    def _loader(self, stage: str, train: bool, drop_last: bool = False) -> DataLoader:
        dataset = self.dataset(self.split(stage), train)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=drop_last and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate,
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
