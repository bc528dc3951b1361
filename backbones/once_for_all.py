"""Once-for-All (Cai et al. 2020): subnets of its MobileNetV3 search space, on the ``ofa`` package.

One supernet (``ofa_mbv3_d234_e346_k357_w1.0``, or ``_w1.2``) holds every subnet: five stages of up
to four MobileNetV3 blocks, each with a kernel size ``ks`` of 3, 5 or 7 and an expand ratio ``e`` of
3, 4 or 6, each stage with a depth ``d`` of 2, 3 or 4. A subnet is chosen by those three lists (or one
value for all) and takes its weights from the supernet's: ``pretrained`` is the supernet's checkpoint
(or a subnet's own state dict). The architecture is the ``ofa`` package's (``pip install
'kestrel-vision[ofa]'``); its model zoo, which downloads from GitHub and Google Drive, is not used.

Levels: ``C1`` (16 channels, the first block) to ``C4`` (112, the fourth stage) at the end of each
stride, ``C5`` the 960-channel expansion conv after the last stage (as torchvision's MobileNetV3);
``feature_location="expansion"`` taps the expansion layer of the block that next halves the resolution.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ._features import FeatureLocation
from ._options import ALL_LEVELS, check_options
from ._registry import register_backbone
from ._torchvision import LayerPyramid
from ._weights import LibraryWeights, load_weights, pretrained_weights, read_state_dict, weight_problems

SUPERNETS = {1.0: "ofa_mbv3_d234_e346_k357_w1.0", 1.2: "ofa_mbv3_d234_e346_k357_w1.2"}
SUPERNET_URL = "https://raw.githubusercontent.com/han-cai/files/master/ofa/ofa_nets/{}"
_SPACE = {"ks": ((3, 5, 7), 20), "e": ((3, 4, 6), 20), "d": ((2, 3, 4), 5)}  # values, how many (one per slot)
_HEAD = ("global_avg_pool.", "feature_mix_layer.", "classifier.")


def _check_choice(name: str, value: int | Sequence[int]) -> int | list[int]:
    allowed, count = _SPACE[name]
    values = [value] if isinstance(value, int) else list(value)
    if (len(values) not in (1, count)) or any(v not in allowed for v in values):
        raise ValueError(
            f"Once-for-All's {name} must be one of {allowed} or a list of {count} of them, got {value!r}"
        )
    return values[0] if len(values) == 1 else values


def supernet_weights(width_mult: float) -> LibraryWeights:
    """The Once-for-All supernet's ImageNet weights, kept in the torch hub cache."""
    net_id = SUPERNETS[width_mult]
    path = Path(torch.hub.get_dir()) / "checkpoints" / net_id
    url = SUPERNET_URL.format(net_id)

    def load() -> dict[str, torch.Tensor]:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path))
        return read_state_dict(path)

    return LibraryWeights(f"Once-for-All's supernet {net_id}", load,
                          f"Download {url} and put it at {path} (or set TORCH_HOME)")


class OnceForAll(LayerPyramid):
    """A subnet of Once-for-All's MobileNetV3 supernet, as a multi-scale feature pyramid.

    Args:
        ks: Kernel size of each of the 20 block slots (3, 5 or 7), or one for all.
        e: Expand ratio of each of the 20 block slots (3, 4 or 6), or one for all.
        d: Depth of each of the 5 stages (2, 3 or 4), or one for all. Stage ``i`` runs its first
            ``d[i]`` slots. The defaults (7, 6, 4) are the largest subnet, the supernet itself.
        width_mult: 1.0 or 1.2, the two published supernets.
        pretrained: ``False``, ``True`` (the supernet's ImageNet weights, from the torch hub cache or the
            network) or the path of a state dict: the supernet's checkpoint, or a subnet's (this
            backbone's, or ``ofa``'s ``get_active_subnet()``'s).
        levels, output_stride, feature_location, frozen_stages, freeze_bn: as for every backbone.
    """

    def __init__(
        self,
        ks: int | Sequence[int] = 7,
        e: int | Sequence[int] = 6,
        d: int | Sequence[int] = 4,
        width_mult: float = 1.0,
        pretrained: bool | str = False,
        levels: Sequence[int] | None = None,
        output_stride: int = 32,
        feature_location: FeatureLocation = "block",
        frozen_stages: int = 0,
        freeze_bn: bool = False,
    ):
        super().__init__()
        check_options(levels, output_stride, feature_location, frozen_stages)
        levels = tuple(levels or ALL_LEVELS)
        if width_mult not in SUPERNETS:
            raise ValueError(f"Once-for-All's supernets have width_mult 1.0 or 1.2, got {width_mult}")
        choice = {"ks": _check_choice("ks", ks), "e": _check_choice("e", e), "d": _check_choice("d", d)}
        try:
            from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
        except ImportError as err:
            raise ImportError(
                f"Once-for-All backbones need the `ofa` package ({err}): pip install 'kestrel-vision[ofa]'"
            ) from None
        supernet = OFAMobileNetV3(
            dropout_rate=0, width_mult=width_mult, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]
        )
        state, source = pretrained_weights(pretrained, lambda: supernet_weights(width_mult)) or (None, None)
        if state is not None and not weight_problems(supernet.state_dict(), state):
            load_weights(supernet, state, source)
            state = None  # the subnet takes its weights from the supernet
        supernet.set_active_subnet(**choice)
        subnet = supernet.get_active_subnet(preserve_weight=True)
        self.choice, self.width_mult = choice, width_mult

        order = ["first_conv", *(f"blocks.{i}" for i in range(len(subnet.blocks))), "final_expand_layer"]
        nominal, taps = self._plan([(n, subnet.get_submodule(n)) for n in order], levels, feature_location,
                                   "Once-for-All's subnet")
        last = max(tap[2] for tap in taps)
        self.first_conv = subnet.first_conv
        self.blocks = nn.ModuleList(subnet.blocks[: min(last, len(subnet.blocks))])
        if last == len(order) - 1:
            self.final_expand_layer = subnet.final_expand_layer

        if state is not None:
            unused = [*_HEAD, *(f"blocks.{i}." for i in range(len(self.blocks), len(subnet.blocks)))]
            if last < len(order) - 1:
                unused.append("final_expand_layer.")
            problems = weight_problems(self.state_dict(), state, drop=unused)
            if problems:
                raise ValueError(
                    f"weights {source} fit neither Once-for-All's supernet {SUPERNETS[width_mult]} nor this "
                    f"subnet ({choice}): {'; '.join(problems)}"
                )
            load_weights(self, state, source, drop=unused)
        self.freeze_bn = freeze_bn
        self._build(order, nominal, taps, output_stride, frozen_stages)


register_backbone("ofa_mbv3")(functools.partial(OnceForAll, width_mult=1.0))
register_backbone("ofa_mbv3_w12")(functools.partial(OnceForAll, width_mult=1.2))
