"""Real photographs shipped offline by scikit-learn and scikit-image, cut into deterministic crops for
calibrating and checking ImageNet classifiers.

Why crops of a dozen photos and not random tensors: quantization ranges and the accuracy check must see the
statistics of natural images (a calibration set of noise or zeros gives ranges a real input overflows).
Each crop is a seeded random square window (22-100 % of the photo's short side), optionally mirrored,
resized to the network's resolution and normalised with the ImageNet mean and standard deviation. The
calibration and held-out sets are drawn from disjoint crop windows (`split`), so the check never runs on
an image the ranges were computed from; they do share the photos, which a dozen photos cannot avoid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.errors import EdgekitError

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
#: scikit-image colour photographs available without a download (skimage.data.cat is chelsea again)
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "stereo_motorcycle")


def photos() -> dict[str, np.ndarray]:
    """name -> HxWx3 uint8 photo, in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out: dict[str, np.ndarray] = {}
    for name in SKIMAGE_PHOTOS:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            out[f"{name}_left"], out[f"{name}_right"] = img[0], img[1]
        else:
            out[name] = img
    sample = load_sample_images()
    for path, img in zip(sample.filenames, sample.images, strict=True):
        out[path.rsplit("/", 1)[-1].split(".")[0]] = img
    return out


def full_view(img: np.ndarray, size: int) -> np.ndarray:
    """The centre square of the photo, resized: the view a classifier is usually shown (1x3xSxS)."""
    h, w = img.shape[:2]
    s = min(h, w)
    return _normalise(_resize(img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s], size))[None]


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _normalise(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


@dataclass(frozen=True)
class Crop:
    photo: str
    top: int
    left: int
    side: int
    mirrored: bool


def windows(count: int, seed: int = 0) -> list[Crop]:
    """`count` distinct crop windows, spread round-robin over the photos (seeded, so always the same)."""
    pics = {k: v.shape[:2] for k, v in photos().items()}
    names = list(pics)
    rng = np.random.default_rng(seed)
    out: list[Crop] = []
    seen: set[Crop] = set()
    i = 0
    while len(out) < count:
        name = names[i % len(names)]
        i += 1
        h, w = pics[name]
        side = int(min(h, w) * rng.uniform(0.22, 1.0))
        crop = Crop(name, int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1)), side,
                    bool(rng.integers(0, 2)))
        if crop not in seen:
            seen.add(crop)
            out.append(crop)
    return out


def render(crops: list[Crop], size: int) -> np.ndarray:
    """N x 3 x size x size float32, ImageNet-normalised."""
    pics = photos()
    x = np.empty((len(crops), 3, size, size), dtype=np.float32)
    for k, c in enumerate(crops):
        patch = pics[c.photo][c.top : c.top + c.side, c.left : c.left + c.side]
        if c.mirrored:
            patch = patch[:, ::-1]
        x[k] = _normalise(_resize(np.ascontiguousarray(patch), size))
    return x


def split(calibration: int = 128, held_out: int = 300, size: int = 240, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """(calibration crops, held-out crops): disjoint windows of the same photos, deterministic."""
    if calibration < 1 or held_out < 1:
        raise EdgekitError(f"photo crops: calibration and held-out counts must be >= 1 (got {calibration}, "
                           f"{held_out})")
    crops = windows(calibration + held_out, seed)
    cal, held = crops[:calibration], crops[calibration:]
    assert not set(cal) & set(held)
    return render(cal, size), render(held, size)
