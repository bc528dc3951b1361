"""Every random draw in a loader worker is rank-aware: torch's (torchvision's IoU crop, zoom-out), Python's
and NumPy's, so that the processes of a distributed run do not draw the same augmentations."""

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.data import _module as module
from tasks.data._module import seed_worker


class Draws(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.tensor([torch.rand(()).item(), random.random(), np.random.rand()], dtype=torch.float64)


def draws() -> torch.Tensor:
    loader = DataLoader(Draws(), batch_size=4, num_workers=1, worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(0))
    return next(iter(loader))


def test_workers_of_two_ranks_draw_differently_and_reproducibly(monkeypatch):
    rank0, again = draws(), draws()
    torch.testing.assert_close(rank0, again, rtol=0, atol=0)  # the same seed, the same draws
    monkeypatch.setattr(module, "process_rank", lambda: 1)  # the workers fork with it
    rank1 = draws()  # the loader's generator seeds both alike, as seed_everything does on every rank
    assert (rank0 != rank1).all(), (rank0, rank1)  # every source: torch, random, numpy


def test_without_workers_a_second_rank_draws_differently(shapes, monkeypatch):
    """num_workers 0: the process itself augments; every rank but the first reseeds its generators by rank."""
    from tasks.data.detection import DetectionData
    root = shapes / "coco"

    def first_batch():
        torch.manual_seed(0)  # as seed_everything does on every rank
        data = DetectionData(str(root), image_size=64, batch_size=4, num_workers=0, augment="ssdlite")
        data.setup("fit")
        return [t["boxes"] for t in next(iter(data.train_dataloader()))[1]]

    monkeypatch.setattr(module, "process_rank", lambda: 1)
    rank1, again = first_batch(), first_batch()
    assert all(torch.equal(a, b) for a, b in zip(rank1, again))  # seeded: the same rank draws the same
    monkeypatch.setattr(module, "process_rank", lambda: 2)
    rank2 = first_batch()
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(rank1, rank2))
