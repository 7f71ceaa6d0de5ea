"""The data NetAdapt fine-tunes and scores on: a folder of images, or a generated labelled set.

``folder(DIR)``: class subfolders of images (ImageNet's layout on disk) give labels; images
straight in ``DIR`` give none, and then fine-tuning distils from the starting network.
``synthetic(n)``: shapes (circle, square, triangle, cross) in warm or cool colours, drawn solid
or striped (texture that does not decide the class), in random sizes and places over noise:
8 classes (shape x colour) a MobileNet learns in a few hundred steps on a laptop CPU. It exists for the tests and the demo; it says nothing of ImageNet accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mobilec.errors import UserError

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]
HELD_OUT = 0.2  # the share of the images kept out of fine-tuning, to score on
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("warm", "cool")


class DataError(UserError, ValueError):
    pass


@dataclass
class Dataset:
    train: torch.Tensor  # N x 3 x S x S, normalised as for ImageNet
    held_out: torch.Tensor
    train_labels: Optional[torch.Tensor]  # N, or N x S x S per pixel; None: fine-tuning distils from the start
    held_out_labels: Optional[torch.Tensor]
    classes: list[str]
    description: str

    @property
    def labelled(self) -> bool:
        return self.train_labels is not None

    @property
    def size(self) -> int:
        return int(self.train.shape[-1])


def _split(images: np.ndarray, labels: Optional[np.ndarray], classes: list[str], description: str,
           seed: int) -> Dataset:
    order = np.random.default_rng(seed).permutation(len(images))
    n_held = max(1, int(len(images) * HELD_OUT))
    held, train = order[:n_held], order[n_held:]
    x = torch.from_numpy((images.astype(np.float32) / 255.0 - MEAN) / STD)
    y = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return Dataset(x[train], x[held], None if y is None else y[train], None if y is None else y[held], classes,
                   description)


def synthetic(n: int = 2048, size: int = 64, seed: int = 0, masks: bool = False) -> Dataset:
    """``n`` generated labelled images of ``size`` pixels, 8 classes (shape x colour); with
    ``masks``, labelled per pixel for segmentation: the shape's class + 1 over the whole shape
    (stripes included), 0 for the background."""
    if n < 16 or size < 32:
        raise DataError(f"--synthetic {n} at {size} px: give at least 16 images of at least 32 px")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    labels = rng.integers(0, len(SHAPES) * len(COLOURS), n)
    pixels = np.zeros((n, size, size), dtype=np.int64) if masks else None
    for k in range(n):
        shape, warm = divmod(int(labels[k]), len(COLOURS))
        cy, cx = rng.uniform(0.3, 0.7, 2)
        r = rng.uniform(0.15, 0.28)
        dy, dx = yy - cy, xx - cx
        if SHAPES[shape] == "circle":
            mask = dy ** 2 + dx ** 2 <= r ** 2
        elif SHAPES[shape] == "square":
            mask = np.maximum(abs(dy), abs(dx)) <= r * 0.85
        elif SHAPES[shape] == "triangle":
            mask = (dy <= r * 0.8) & (dy >= -r) & (abs(dx) <= (dy + r) * 0.6)
        else:
            mask = ((abs(dy) <= r * 0.3) | (abs(dx) <= r * 0.3)) & (np.maximum(abs(dy), abs(dx)) <= r)
        if pixels is not None:
            pixels[k][mask] = labels[k] + 1
        if rng.random() < 0.5:  # striped
            angle = rng.uniform(0, np.pi)
            mask &= np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * size * 0.9) > 0
        background = rng.uniform(60, 140) + rng.normal(0, 20, (3, size, size))  # grey noise
        hot, cold, green = rng.uniform(170, 255), rng.uniform(0, 60), rng.uniform(0, 200)
        colour = np.array([hot, green, cold] if COLOURS[warm] == "warm" else [cold, green, hot])
        img = np.where(mask[None], colour[:, None, None] + rng.normal(0, 10, (3, size, size)), background)
        images[k] = np.clip(img, 0, 255).astype(np.uint8)
    classes = [f"{c} {s}" for s in SHAPES for c in COLOURS]
    if pixels is not None:
        return _split(images, pixels, ["background"] + classes, f"{n} generated images, labelled per pixel "
                      f"({len(classes)} classes: shape x colour, and the background; {size} px)", seed)
    return _split(images, labels, classes, f"{n} generated images ({len(classes)} classes: shape x colour, "
                  f"{size} px)", seed)


def _read(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            side = min(im.size)  # centre square, then resize
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not an image this can read ({e})") from None


def folder(root, size: int = 64, seed: int = 0) -> Dataset:
    """The images under ``root``: labelled by class subfolder, or unlabelled when they lie in ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    files = [(f, i) for i, d in enumerate(subdirs) for f in sorted(d.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    labelled = bool(files)
    if not labelled:
        files = [(f, 0) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if len(files) < 2:
        raise DataError(f"--data {root}: found {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); give a folder of "
                        f"class subfolders of images, or of images (then fine-tuning distils)")
    images = np.stack([_read(f, size) for f, _ in files])
    labels = np.array([i for _, i in files]) if labelled else None
    classes = [d.name for d in subdirs] if labelled else []
    what = f"{len(classes)} classes" if labelled else "no labels"
    return _split(images, labels, classes, f"{len(files)} images from {root} ({what}, {size} px)", seed)
