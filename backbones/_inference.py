"""Networks as they run for inference in PyTorch: batch norms folded into the convolutions before
them, and channels-last memory.

Both are what ONNX Runtime and OpenVINO do to an exported graph, done to the module: a folded batch
norm is one pass over the activations fewer, and oneDNN's convolutions (depthwise ones above all)
run faster on channels-last tensors. On this project's 2-core CPU the pair made SSDLite, DeepLabV3+
and the pose head 1.1-1.7x faster at batch 1 and 1.2-2.5x at batch 8 (docs/guides/benchmarking.md, "Faster where
it is free"); the outputs move by float rounding only (tested against the module as trained).

``torch.fx.experimental.optimization.fuse`` folds by tracing the whole network symbolically, which
the detector's data-dependent decoding and the backbones' tap hooks do not survive, and returns a
``GraphModule`` without the network's methods; ``torch.ao.quantization.fuse_modules`` needs every
pair named. Here the pairs are found where their order is their execution order: consecutive
children of an ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``, SSDLite's heads and extra
blocks, the pose head's deconvolutions), and each is folded by torch's ``fuse_conv_bn_eval``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    # exact types: a subclass of either may do more in its forward (timm's BatchNormAct2d adds an activation)
    return (type(conv) in _CONVS and type(norm) is nn.BatchNorm2d and norm.track_running_stats
            and norm.running_mean is not None and not (conv._forward_hooks or norm._forward_hooks
                                                       or conv._forward_pre_hooks or norm._forward_pre_hooks))


def fold_batch_norms(module: nn.Module) -> int:
    """Fold, in place, every ``BatchNorm2d`` that directly follows a convolution in an ``nn.Sequential``
    into that convolution (the norm becomes ``nn.Identity``). For inference only: the module must be in
    eval mode. Returns how many were folded.

    Raises:
        ValueError: the module is in training mode (folding uses the running statistics).
    """
    if module.training:
        raise ValueError("fold_batch_norms needs a module in eval mode: folding uses the running statistics")
    folded = 0
    for sequential in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = sequential._modules[first], sequential._modules[second]
            if _foldable(conv, norm):
                transpose = isinstance(conv, nn.ConvTranspose2d)
                sequential._modules[first] = fuse_conv_bn_eval(conv, norm, transpose=transpose)
                sequential._modules[second] = nn.Identity()
                folded += 1
    return folded


def inference_copy(network: nn.Module, channels_last: bool = True) -> nn.Module:
    """A copy of ``network`` for inference: eval mode, no gradients, batch norms folded
    (:func:`fold_batch_norms`) and, with ``channels_last``, its weights in channels-last memory (the
    first convolution then gives channels-last activations to the rest). ``network`` is not changed."""
    inference = copy.deepcopy(network).eval().requires_grad_(False)
    fold_batch_norms(inference)
    if channels_last:
        inference.to(memory_format=torch.channels_last)
    return inference
