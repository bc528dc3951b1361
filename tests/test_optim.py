"""Parameter groups and the warm-up schedules."""

import math

import pytest
import torch

from tasks.optim import TrainingLength, WarmupCosineLR, WarmupMultiStepLR, WarmupPolyLR, param_groups


def rates(scheduler_class, length, **options):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = scheduler_class(optimizer, length, **options)
    out = []
    for _ in range(length.total_steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_then_cosine():
    lr = rates(WarmupCosineLR, TrainingLength(100, 10), warmup_steps=10, warmup_factor=0.01)
    assert lr[0] == pytest.approx(0.01)
    assert lr[5] == pytest.approx(0.01 + 0.99 * 5 / 10)
    assert lr[10] == pytest.approx(1.0)
    assert lr[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lr[-1] < 0.001 and all(a >= b for a, b in zip(lr[10:], lr[11:]))


def test_poly_without_warmup_starts_at_the_base_rate():
    lr = rates(WarmupPolyLR, TrainingLength(50, 5), power=0.9)
    assert lr[0] == pytest.approx(1.0)
    assert lr[10] == pytest.approx((1 - 9 / 49) ** 0.9, rel=1e-6)


def test_multistep_milestones_are_epochs():
    lr = rates(WarmupMultiStepLR, TrainingLength(40, 10), milestones=[2, 3], gamma=0.1, warmup_steps=5)
    assert lr[5] == pytest.approx(1.0) and lr[19] == pytest.approx(1.0)
    assert lr[20] == pytest.approx(0.1) and lr[29] == pytest.approx(0.1) and lr[30] == pytest.approx(0.01)


def test_warmup_longer_than_training_is_clamped():
    lr = rates(WarmupCosineLR, TrainingLength(5, 5), warmup_steps=1000)
    assert len(lr) == 5 and lr[-1] <= 1.0


def test_param_groups_keep_norms_and_biases_out_of_weight_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))
    model[0].weight.requires_grad_(False)
    groups = param_groups(model, norm_weight_decay=0.0)
    assert [p.shape for p in groups[0]["params"]] == [torch.Size([4, 8, 1, 1])]
    assert len(groups[1]["params"]) == 4 and groups[1]["weight_decay"] == 0.0  # conv biases, norm weight/bias
    assert "weight_decay" not in param_groups(model, norm_weight_decay=None)[1]


@pytest.mark.parametrize("scheduler_class, options", [
    (WarmupCosineLR, {"warmup_steps": 5}), (WarmupPolyLR, {"warmup_steps": 3}),
    (WarmupMultiStepLR, {"milestones": (2, 4), "warmup_steps": 5})])
def test_a_resumed_schedule_is_this_runs_schedule_at_the_checkpoints_step(scheduler_class, options, capsys):
    """Resumed with the same length, a schedule goes on as if never stopped; with another (``fit --ckpt_path last``
    with more epochs) it is the schedule of the new length from the checkpoint's step, and says so."""
    def run(total, steps, state=None):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = scheduler_class(optimizer, TrainingLength(total, 10), **options)
        if state is not None:
            optimizer.load_state_dict(state[0])
            scheduler.load_state_dict(state[1])
        out = []
        for _ in range(steps):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out, (optimizer.state_dict(), scheduler.state_dict())

    whole, _ = run(30, 30)
    first, state = run(30, 12)
    assert first + run(30, 18, state)[0] == whole
    assert capsys.readouterr().out == ""
    longer, _ = run(60, 60)
    resumed, _ = run(60, 48, state)
    assert resumed == pytest.approx(longer[12:], abs=1e-12)
    assert "The learning-rate schedule now spans 60 steps (the checkpoint's run planned 30)" in capsys.readouterr().out
