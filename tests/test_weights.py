"""Weights: files, the torch hub cache and the Hugging Face cache, all written by the tests themselves."""

import os

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from backbones import build_backbone


def _randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter and norm statistic a distinct random value, so a wrong load shows."""
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    return model


def _assert_loaded(backbone: torch.nn.Module, reference: dict[str, torch.Tensor], prefix: str = "") -> None:
    own = backbone.state_dict()
    assert own, "backbone has no weights"
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(value, reference[key[len(prefix) :]], rtol=0, atol=0, msg=key)


@pytest.fixture
def classifier_file(tmp_path):
    model = _randomized(torchvision.models.mobilenet_v2())
    path = tmp_path / "mobilenet_v2_imagenet.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_torchvision_classifier_file_loads_and_drops_classifier(classifier_file):
    path, reference = classifier_file
    backbone = build_backbone("mobilenet_v2", pretrained=str(path))
    _assert_loaded(backbone, reference)
    assert not any(k.startswith("classifier") for k in backbone.state_dict())


def test_file_loads_into_truncated_dilated_frozen_backbone(classifier_file):
    path, reference = classifier_file
    backbone = build_backbone(
        "mobilenet_v2", pretrained=str(path), levels=(4, 8), output_stride=8, frozen_stages=2
    )
    _assert_loaded(backbone, reference)


def test_kestrel_backbone_round_trip(tmp_path):
    saved = _randomized(build_backbone("efficientnet_b0", levels=(8, 16)))
    path = tmp_path / "backbone.pt"
    torch.save({"state_dict": saved.state_dict()}, path)  # a Lightning-style wrapper
    loaded = build_backbone("efficientnet_b0", levels=(8, 16), pretrained=str(path))
    _assert_loaded(loaded, saved.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(saved.eval()(x).values(), loaded.eval()(x).values()):
            torch.testing.assert_close(a, b)


def test_ddp_module_prefix_is_stripped(tmp_path, classifier_file):
    _, reference = classifier_file
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in reference.items()}, path)
    _assert_loaded(build_backbone("mobilenet_v2", pretrained=str(path)), reference)


def test_unexpected_and_missing_keys_are_listed(tmp_path, classifier_file):
    _, reference = classifier_file
    extra = dict(reference, **{"features.0.extra_weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra\.pth.*unexpected keys: features\.0\.extra_weight"):
        build_backbone("mobilenet_v2", pretrained=str(tmp_path / "extra.pth"))
    partial = {k: v for k, v in reference.items() if not k.startswith("features.3.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing keys: features\.3\.conv"):
        build_backbone("mobilenet_v2", pretrained=str(tmp_path / "partial.pth"))


def test_shape_mismatch_is_listed(classifier_file):
    path, _ = classifier_file
    with pytest.raises(ValueError, match="shape mismatches"):
        build_backbone("mobilenet_v2_050", pretrained=str(path))


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_backbone("mobilenet_v2", pretrained=str(tmp_path / "nowhere.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights file .*garbage.pth"):
        build_backbone("mobilenet_v2", pretrained=str(garbage))
    not_tensors = tmp_path / "config.pth"
    torch.save({"lr": 0.1}, not_tensors)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        build_backbone("mobilenet_v2", pretrained=str(not_tensors))


class _Payload:
    pass


def test_loading_refuses_arbitrary_pickles(tmp_path):
    """weights_only=True: a file that needs a class to unpickle is refused, not executed."""
    path = tmp_path / "pickle.pth"
    torch.save({"features.0.0.weight": _Payload()}, path)
    with pytest.raises(ValueError, match="cannot read weights file"):
        build_backbone("mobilenet_v2", pretrained=str(path))


def test_safetensors_file(tmp_path, classifier_file):
    _, reference = classifier_file
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.items()}, str(path))
    _assert_loaded(build_backbone("mobilenet_v2", pretrained=str(path)), reference)


def test_pretrained_true_reads_the_torch_hub_cache(hub_dir):
    weights = torchvision.models.MobileNet_V3_Large_Weights.DEFAULT
    reference = _randomized(torchvision.models.mobilenet_v3_large()).state_dict()
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(reference, hub_dir / "checkpoints" / os.path.basename(weights.url))
    backbone = build_backbone("mobilenet_v3_large", pretrained=True, levels=(16, 32))
    _assert_loaded(backbone, reference)


def test_pretrained_true_without_cache_or_network_says_where_to_put_the_file(hub_dir):
    weights = torchvision.models.EfficientNet_B0_Weights.DEFAULT
    expected = str(hub_dir / "checkpoints" / os.path.basename(weights.url))
    with pytest.raises(FileNotFoundError, match=f"put it at {expected}"):
        build_backbone("efficientnet_b0", pretrained=True)


def test_pretrained_true_refuses_a_width_without_weights():
    with pytest.raises(ValueError, match="width 1.0"):
        build_backbone("mobilenet_v2_035", pretrained=True)


TIMM_NAME = "mobilenetv4_conv_small"


def test_timm_classifier_file(tmp_path):
    reference = _randomized(timm.create_model(TIMM_NAME)).state_dict()
    path = tmp_path / "timm.pth"
    torch.save(reference, path)
    backbone = build_backbone(f"timm:{TIMM_NAME}", pretrained=str(path), levels=(8, 16, 32))
    _assert_loaded(backbone, reference, prefix="model.")


def test_timm_kestrel_round_trip_and_errors(tmp_path):
    saved = _randomized(build_backbone(f"timm:{TIMM_NAME}"))
    path = tmp_path / "timm_backbone.pth"
    torch.save(saved.state_dict(), path)
    _assert_loaded(build_backbone(f"timm:{TIMM_NAME}", pretrained=str(path)), saved.state_dict())
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv_stem.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="fit neither timm's mobilenetv4_conv_small classifier"):
        build_backbone(f"timm:{TIMM_NAME}", pretrained=str(wrong))


def test_timm_pretrained_true_reads_the_hugging_face_cache(tmp_path, monkeypatch):
    """timm's own weight API, offline: the file sits where huggingface_hub caches it."""
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    repo_id = timm.models.get_pretrained_cfg(TIMM_NAME).hf_hub_id
    repo = tmp_path / "hf" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    reference = _randomized(timm.create_model(TIMM_NAME)).state_dict()
    save_file({k: v.contiguous() for k, v in reference.items()}, str(snapshot / "model.safetensors"))

    backbone = build_backbone(f"timm:{TIMM_NAME}", pretrained=True)
    _assert_loaded(backbone, reference, prefix="model.")

    (snapshot / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="Hugging Face cache"):
        build_backbone(f"timm:{TIMM_NAME}", pretrained=True)
