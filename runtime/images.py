"""An image file as a model's input tensor (ImageNet's normalisation, NCHW). Needs pillow, imported
only when an image is read."""

from __future__ import annotations

import numpy as np

from mobilec.errors import ConfigError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def image_tensor(image: str, shape, dtype: str = "float32", flag: str = "--image") -> np.ndarray:
    """One image file as the registry models' input: RGB resized to the input's size, scaled to [0, 1],
    normalised with ImageNet's mean and deviation, NCHW, repeated over the batch."""
    try:
        from PIL import Image, UnidentifiedImageError  # only this path needs pillow
    except ImportError:
        raise ConfigError(f"{flag} needs pillow (pip install pillow), or pass --input x.npy") from None

    n, c, h, w = shape
    try:
        img = Image.open(image).convert("RGB").resize((w, h), Image.BILINEAR)
    except UnidentifiedImageError:
        raise ConfigError(f"{flag} {image}: not an image pillow can read (PNG, JPEG, ...); give a photo, "
                         f"or an input tensor with --input x.npy") from None
    x = (np.asarray(img, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.repeat(x.transpose(2, 0, 1)[None], n, axis=0).astype(dtype)
