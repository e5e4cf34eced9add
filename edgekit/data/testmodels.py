"""Small architectures and data for tests and benchmarks: models unlike the digits CNN (3-channel input,
residual connections, depthwise-separable convolutions, a >= 1 M-parameter variant) and a labelled
3x32x32 data set made from scikit-learn's digits, so exports are checked on trained, confident models
without downloading anything.
"""

from __future__ import annotations

import numpy as np

from edgekit.data import zoo


def digits_rgb(part: str, size: int = 32) -> zoo.Split:
    """Digits upsampled (nearest) to size x size with three differently scaled channels, normalised."""
    split = zoo.digits_split(part)
    base = split.x[:, 0]  # N x 16 x 16 in [-1, 1]
    rep = size // base.shape[-1]
    img = base.repeat(rep, axis=1).repeat(rep, axis=2)
    x = np.stack([img, 0.8 * img + 0.1, -0.6 * img], axis=1).astype(np.float32)
    return zoo.Split(x, split.y)


def _ds_block(cin: int, cout: int, stride: int):
    """Depthwise 3x3 + pointwise 1x1, each with BN and ReLU; residual when shapes allow."""
    from torch import nn

    class DSBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dw = nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                                    nn.BatchNorm2d(cin), nn.ReLU())
            self.pw = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.residual = stride == 1 and cin == cout
            self.act = nn.ReLU()

        def forward(self, x):
            y = self.pw(self.dw(x))
            return self.act(y + x if self.residual else y)

    return DSBlock()


def resdw_net(widths: tuple[int, ...] = (16, 32, 64), head: int = 0, num_classes: int = 10, in_ch: int = 3):
    """Stem conv, depthwise-separable stages (stride 2, then a residual block each), optional MLP head."""
    from torch import nn

    layers: list[nn.Module] = [nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    cin = widths[0]
    for w in widths[1:]:
        layers += [_ds_block(cin, w, 2), _ds_block(w, w, 1)]
        cin = w
    mlp: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if head:
        mlp += [nn.Linear(cin, head), nn.ReLU()]
        cin = head
    mlp.append(nn.Linear(cin, num_classes))
    return nn.Sequential(*layers, *mlp)


def small_resdw():
    """About 10 k parameters: residual and depthwise convolutions, 1x3x32x32 input."""
    return resdw_net((16, 32, 64))


def large_resdw():
    """About 1.3 M parameters, most of them in wide pointwise layers at low resolution."""
    return resdw_net((32, 64, 128, 512, 512), head=512)


def plain_cnn(widths: tuple[int, ...] = (32, 64, 64, 128, 128, 256, 256), num_classes: int = 10):
    """Plain 3x3 conv-BN-ReLU stack (stride 2 where the width grows), ~1.2 M parameters by default: the
    GEMM-bound kind of network where int8 kernels pay off most."""
    from torch import nn

    layers, cin = _conv3x3_stack(widths)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def _conv3x3_stack(widths: tuple[int, ...]) -> tuple[list, int]:
    """3x3 conv-BN-ReLU layers from an RGB input, stride 2 where the width grows (after the first);
    returns the layers and the last width."""
    from torch import nn

    layers: list[nn.Module] = []
    cin = 3
    for w in widths:
        stride = 2 if w > cin and cin != 3 else 1
        layers += [nn.Conv2d(cin, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        cin = w
    return layers, cin


def train_on_digits_rgb(model, epochs: int = 4, seed: int = 0, size: int = 32):
    """A few epochs on digits_rgb so outputs are confident, as a real student's would be."""
    return zoo.train_classifier(model, digits_rgb("train", size), epochs=epochs, seed=seed, lr=3e-3)


# -- a depthwise-separable model that plain min-max INT8 gets wrong --------------------------------------------
#
# How it is built: a plain 3x3 conv trunk (where int8 kernels pay off) followed by depthwise-separable blocks
# at low resolution, trained normally on digits_rgb. It is wide enough (128-channel trunk at 16x16, 256-channel
# blocks; ~0.29 M parameters, ~54 M MACs) that ONNX Runtime's int8 kernels, not per-op overhead, set its
# latency: an all-int8 graph of it runs ~2.6x faster than FP32 on a VNNI/AMX Xeon, where the 85 k-parameter
# first version (64-channel trunk) ran only ~1.8x faster. Then, in two of the blocks, the channels between the
# depthwise layer (after its batch norm and ReLU) and the pointwise layer are rescaled: channel c of the
# depthwise output is multiplied by s_c and the pointwise weights that read it by 1 / s_c. ReLU is positively
# homogeneous, so the FP32 function does not change (up to float rounding), but the channels of that one
# activation tensor now span ~3 orders of magnitude. That is what Nagel et al. (2019) measured in real
# MobileNets' depthwise layers; per-tensor activation quantization (every int8 format here) then rounds the
# small channels to a few levels, and top-1 agreement of min-max PTQ drops well below 95%. Per-channel weight
# quantization does not help (the weights are fine); keeping the one activation in float, or equalising the
# ranges across the two layers (CLE), does.

SENSITIVE_SPREAD = {"block1": 2.5, "block2": 3.0}  # log10 of the largest/smallest channel scale per block


def sensitive_dwsep_net(trunk: tuple[int, ...] = (32, 128, 128), blocks: tuple[int, ...] = (256, 256),
                        num_classes: int = 10):
    """3x3 conv trunk (stride 2 where it widens), then depthwise 3x3 (stride 2 in the first) + pointwise 1x1
    blocks; every conv has BN and ReLU. Untrained; see `sensitive_dwsep` for the trained, imbalanced model."""
    from torch import nn

    layers, cin = _conv3x3_stack(trunk)
    for i, w in enumerate(blocks):
        layers.append(nn.Sequential(
            nn.Conv2d(cin, cin, 3, 2 if i == 0 else 1, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
            nn.Conv2d(cin, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()))
        cin = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def imbalance_channels(model, spread: dict[str, float] | None = None, seed: int = 0):
    """Rescale the depthwise->pointwise channels of the named blocks (function-preserving; see above), in place.

    `spread` maps "blockK" (K = 1-based index of the depthwise-separable block) to log10 of the ratio between
    its largest and smallest channel scale. Returns the model.
    """
    import torch
    from torch import nn

    spread = SENSITIVE_SPREAD if spread is None else spread
    blocks = [m for m in model if isinstance(m, nn.Sequential)]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, decades in spread.items():
            idx = int(key.removeprefix("block")) - 1
            if not 0 <= idx < len(blocks):
                raise ValueError(f"{key}: the model has {len(blocks)} depthwise-separable blocks")
            bn, pw = blocks[idx][1], blocks[idx][3]
            n = bn.num_features
            s = 10 ** (decades * (torch.rand(n, generator=gen) - 0.5))
            bn.weight.mul_(s)
            bn.bias.mul_(s)
            pw.weight.div_(s.view(1, n, 1, 1))
    return model


_SENSITIVE_CACHE: dict[tuple, object] = {}


def sensitive_dwsep(epochs: int = 3, seed: int = 0, size: int = 32, spread: dict[str, float] | None = None):
    """The trained, channel-imbalanced depthwise-separable model (input 1x3xSIZExSIZE), for the fallback tests and
    benchmark. Trains in ~20 s on one core; deterministic for a seed. Trained once per process for given
    arguments (the tests of fallback, diagnose and self-distillation all use it); each call returns a copy."""
    import copy

    import torch

    key = (epochs, seed, size, tuple(sorted((spread if spread is not None else SENSITIVE_SPREAD).items())))
    if key not in _SENSITIVE_CACHE:
        torch.manual_seed(seed)
        model = train_on_digits_rgb(sensitive_dwsep_net(), epochs=epochs, seed=seed, size=size)
        _SENSITIVE_CACHE[key] = imbalance_channels(model, spread, seed).eval()
    return copy.deepcopy(_SENSITIVE_CACHE[key])
