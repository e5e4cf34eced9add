"""The embedded default: scikit-learn's digits (shipped inside the package, no download), a teacher CNN and a
student CNN with under 1/8 of its parameters.

Input size: the 8x8 digits are upsampled (nearest, 2x) to 1x16x16 so the convolutions have some spatial
extent to work on; pixels are scaled from 0..16 to [0, 1] and then normalised with mean 0.5, std 0.5.
The student is the *distilled* student (knowledge distillation from the teacher with edgekit's defaults):
edgekit ships distilled students, so its embedded default is one.

Trained weights for seed 0 ship with the package (`zoo_weights/`, made by `scripts/train_zoo.py`). Training
on CPU is deterministic on one machine but not across machines (BLAS kernels round differently on different
CPUs, and 20 epochs amplify that), and an int8 contract checked on a 6 k-parameter model sits within a few
test samples of its threshold; shipping the weights makes the embedded default the same model everywhere.
Other seeds, or `train=True`, train here and are cached (keyed by seed, recipe version and torch version).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

INPUT_SHAPE = (1, 1, 16, 16)
NUM_CLASSES = 10
SPLIT_SEED = 0
TEST_FRACTION = 0.25
RECIPE_VERSION = 2  # 2: the student is distilled from the teacher
WEIGHTS_DIR = Path(__file__).parent / "zoo_weights"
STUDENT_DISTILL_EPOCHS = 20
PREPROCESSING = {
    "source": "sklearn.datasets.load_digits (8x8, 0..16)",
    "resize": "nearest 8x8 -> 16x16",
    "scale": "x / 16",
    "normalize": {"mean": 0.5, "std": 0.5},
    "layout": "NCHW",
    "dtype": "float32",
}


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # float32, N x 1 x 16 x 16
    y: np.ndarray  # int64, N


def preprocess(images_8x8: np.ndarray) -> np.ndarray:
    """0..16 pixel values of shape (N, 8, 8) -> normalised float32 (N, 1, 16, 16)."""
    x = images_8x8.astype(np.float32) / 16.0
    x = x.repeat(2, axis=1).repeat(2, axis=2)
    x = (x - 0.5) / 0.5
    return x[:, None, :, :].astype(np.float32)


def digits_split(part: str) -> Split:
    """The fixed train/test split (stratified, seed 0, 25% test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if part not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', not {part!r}")
    digits = load_digits()
    x = preprocess(digits.images)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return Split(x_tr, y_tr) if part == "train" else Split(x_te, y_te)


def _conv_bn(cin: int, cout: int, **kw):
    from torch import nn

    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(cout), nn.ReLU())


def _cnn(widths: tuple[int, int, int]):
    from torch import nn

    a, b, c = widths

    class DigitsCNN(nn.Module):
        """conv-bn-relu x3 with two 2x2 max-pools, global average pool, linear classifier."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                _conv_bn(1, a), _conv_bn(a, b), nn.MaxPool2d(2), _conv_bn(b, c), nn.MaxPool2d(2)
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(c, NUM_CLASSES)

        def forward(self, x):
            f = self.pool(self.features(x)).flatten(1)
            return self.classifier(f)

    return DigitsCNN()


TEACHER_WIDTHS = (32, 64, 128)
STUDENT_WIDTHS = (8, 16, 32)


def teacher_untrained() -> torch.nn.Module:
    return _cnn(TEACHER_WIDTHS)


def student_untrained() -> torch.nn.Module:
    return _cnn(STUDENT_WIDTHS)


def cache_dir() -> Path:
    root = os.environ.get("EDGEKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgekit"
    )
    return Path(root) / "zoo"


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_classifier(
    model: torch.nn.Module, split: Split, *, epochs: int = 15, lr: float = 3e-3, seed: int = 0,
    batch_size: int = 64, progress: bool = False, desc: str = "train",
) -> torch.nn.Module:
    """Plain supervised training (AdamW, cosine LR); deterministic on CPU for a given seed."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x = torch.from_numpy(split.x)
    y = torch.from_numpy(split.y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    epoch_iter = range(epochs)
    if progress:
        from tqdm import tqdm

        epoch_iter = tqdm(epoch_iter, desc=desc, unit="epoch", leave=False)
    model.train()
    for _ in epoch_iter:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(model: torch.nn.Module, split: Split) -> float:
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(split.x)).argmax(1).numpy()
    return float((pred == split.y).mean())


def shipped_weights(kind: str, seed: int) -> Path:
    return WEIGHTS_DIR / f"digits-{kind}-seed{seed}-v{RECIPE_VERSION}.pt"


def _train(kind: str, seed: int, progress: bool) -> torch.nn.Module:
    import torch

    torch.manual_seed(seed)
    if kind == "teacher":
        model = teacher_untrained()
        return train_classifier(model, digits_split("train"), seed=seed, progress=progress, desc="digits teacher")
    from edgekit.train.distill.stage import distill
    from edgekit.train.distill.trainer import TrainConfig

    teacher = digits_teacher(seed)
    model = student_untrained()
    test = digits_split("test")
    distill(teacher, model, digits_split("train"), (test.x, test.y),
            config=TrainConfig(epochs=STUDENT_DISTILL_EPOCHS, seed=seed, progress=progress,
                               desc="digits student (distilled)"))
    return model.eval()


def _trained(kind: str, seed: int, progress: bool, train: bool = False) -> torch.nn.Module:
    """Shipped weights (seed 0), else the cache, else train and cache. `train=True` skips the shipped ones."""
    import torch

    factory = {"teacher": teacher_untrained, "student": student_untrained}[kind]
    model = factory()
    shipped = shipped_weights(kind, seed)
    if not train and shipped.is_file():
        model.load_state_dict(torch.load(shipped, weights_only=True))
        return model.eval()
    key = hashlib.sha256(f"{kind}-{seed}-{RECIPE_VERSION}-{torch.__version__}".encode()).hexdigest()[:12]
    path = cache_dir() / f"digits-{kind}-{key}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = _train(kind, seed, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval()


def digits_teacher(seed: int = 0, progress: bool = False, train: bool = False) -> torch.nn.Module:
    """The trained teacher (about 94 k parameters)."""
    return _trained("teacher", seed, progress, train)


def digits_student(seed: int = 0, progress: bool = False, train: bool = False) -> torch.nn.Module:
    """The distilled student (about 6 k parameters, 1/15 of the teacher)."""
    return _trained("student", seed, progress, train)


ZOO_MODELS = {"digits-teacher": digits_teacher, "digits-student": digits_student}


# --- A tiny vision transformer pair on digits, so attention-map and hidden-state distillation run for real. ---
#
# 16x16 input cut into 4x4 patches: 16 patch tokens plus a class token. Each attention block routes its
# softmax probabilities through an `nn.Identity` named `attn_map`, so a forward hook on
# `blocks.{i}.attn.attn_map` sees the (batch, heads, tokens, tokens) maps without changing the numerics.
# Teacher and student have the same head count and token count, so their maps compare head by head.

VIT_RECIPE_VERSION = 1
VIT_TEACHER = {"dim": 64, "depth": 4, "heads": 4, "mlp": 128}
VIT_STUDENT = {"dim": 32, "depth": 2, "heads": 4, "mlp": 48}
VIT_PATCH = 4


def _vit(dim: int, depth: int, heads: int, mlp: int):
    import torch
    from torch import nn

    tokens = (INPUT_SHAPE[2] // VIT_PATCH) * (INPUT_SHAPE[3] // VIT_PATCH) + 1

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = heads
            self.scale = (dim // heads) ** -0.5
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.attn_map = nn.Identity()  # tap point for attention distillation

        def forward(self, x):
            b, n, d = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            attn = self.attn_map(((q @ k.transpose(-2, -1)) * self.scale).softmax(-1))
            return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(dim)
            self.attn = Attention()
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class DigitsViT(nn.Module):
        """Patch embedding, class token, learned positions, pre-norm blocks, linear head on the class token."""

        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = nn.Conv2d(INPUT_SHAPE[1], dim, VIT_PATCH, stride=VIT_PATCH)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, NUM_CLASSES)

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
            x = self.norm(self.blocks(x))
            return self.head(x[:, 0])

    return DigitsViT()


def vit_teacher_untrained() -> torch.nn.Module:
    return _vit(**VIT_TEACHER)


def vit_student_untrained() -> torch.nn.Module:
    return _vit(**VIT_STUDENT)


VIT_EPOCHS = 30
VIT_LR = 2e-3


def digits_vit_teacher(seed: int = 0, progress: bool = False) -> torch.nn.Module:
    """The trained ViT teacher (about 137 k parameters); cached like the CNN pair."""
    import torch

    key = hashlib.sha256(f"vit-teacher-{seed}-{VIT_RECIPE_VERSION}-{torch.__version__}".encode()).hexdigest()[:12]
    path = cache_dir() / f"digits-vit-teacher-{key}.pt"
    model = vit_teacher_untrained()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(seed)
    model = vit_teacher_untrained()
    train_classifier(model, digits_split("train"), epochs=VIT_EPOCHS, lr=VIT_LR, seed=seed, progress=progress,
                     desc="digits vit teacher")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval()


ZOO_MODELS["digits-vit-teacher"] = digits_vit_teacher

#: untrained architectures by zoo name: what `edgekit distill --student zoo:NAME` starts from
ZOO_ARCHITECTURES = {
    "digits-teacher": teacher_untrained,
    "digits-student": student_untrained,
    "digits-vit-teacher": vit_teacher_untrained,
    "digits-vit-student": vit_student_untrained,
}


@dataclass(frozen=True)
class ZooPair:
    """A teacher (trained, cached) and the untrained student architecture distilled from it."""

    teacher: str  # key of ZOO_MODELS
    student: str  # key of ZOO_ARCHITECTURES
    #: default feature/attention/hidden layer pairs (student layer, teacher layer) for this pair
    attention: tuple[tuple[str, str], ...] = ()
    hidden: tuple[tuple[str, str], ...] = ()


ZOO_PAIRS = {
    "digits-cnn": ZooPair("digits-teacher", "digits-student"),
    "digits-vit": ZooPair(
        "digits-vit-teacher", "digits-vit-student",
        attention=(("blocks.0.attn.attn_map", "blocks.1.attn.attn_map"),
                   ("blocks.1.attn.attn_map", "blocks.3.attn.attn_map")),
        hidden=(("blocks.0", "blocks.1"), ("blocks.1", "blocks.3")),
    ),
}
