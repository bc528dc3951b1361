"""``python -m backbones pick``: the networks it times, its ranking against the budget, its command line."""

import pytest
import torch

from backbones.__main__ import main
from tasks.benchmark.pick import build, pick, pose_width, runner


@pytest.mark.parametrize("task,output,shape", [("detect", "cls_logits", (1, None, 81)),
                                               ("segment", "labels", (1, 96, 96)),
                                               ("pose", "keypoints", (1, 17, 3))])
def test_each_task_builds_the_network_its_configs_train(task, output, shape):
    network, input_size = build(task, "mobilenet_v3_small", 96)
    assert input_size == ((96, 64) if task == "pose" else (96, 96))
    with torch.no_grad():
        out = network.eval()(torch.zeros(1, 3, *input_size, dtype=torch.uint8))[output]
    assert all(want is None or got == want for got, want in zip(out.shape, shape)), out.shape


def test_the_onnx_runtime_runs_the_same_network(tmp_path):
    network, input_size = build("detect", "mobilenet_v3_small", 64)
    network.eval()
    x = torch.randint(0, 256, (1, 3, *input_size), dtype=torch.uint8)
    run = runner("detect", network, input_size, "onnx", tmp_path)
    assert type(run).__name__ == "ExportedModel"
    with torch.no_grad():
        expected = network(x)
    got = run(x)
    for name in ("bbox_regression", "cls_logits"):
        torch.testing.assert_close(torch.as_tensor(got[name]), expected[name], atol=1e-3, rtol=1e-3)


def test_pick_ranks_by_latency_and_splits_at_the_budget():
    names = ["mobilenet_v2", "mobilenet_v3_small", "no_such_backbone"]
    fits, rest = pick("segment", 64, budget_ms=1e6, names=names, repeats=2)
    assert {r["backbone"] for r in fits} == set(names[:2]) and fits[0]["ms"] <= fits[1]["ms"]
    assert [r["backbone"] for r in rest] == ["no_such_backbone"] and "error" in rest[0]
    assert all(r["params"] > 0 and r["gflops"] > 0 for r in fits)
    fits, rest = pick("segment", 64, budget_ms=1e-6, names=names[1:2], repeats=1)
    assert fits == [] and rest[0]["backbone"] == "mobilenet_v3_small" and rest[0]["ms"] > 1e-6


def test_command_line(capsys):
    assert pose_width(256) == 192
    assert main(["pick", "--task", "pose", "--size", "64", "--budget-ms", "100000", "--repeats", "1",
                 "mobilenet_v3_small"]) == 0
    out = capsys.readouterr().out
    assert "pose at 64 px, batch 1, eager" in out and "Within 100000 ms, fastest first" in out
    assert "| mobilenet_v3_small |" in out
    for wrong in (["--task", "detect", "--budget-ms", "0"], ["--task", "pose", "--size", "100", "--budget-ms", "9"]):
        with pytest.raises(SystemExit):
            main(["pick", *wrong])
        assert "error:" in capsys.readouterr().err
