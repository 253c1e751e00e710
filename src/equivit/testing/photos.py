"""Real photographs for tests and demos, from scikit-image (offline)."""

from __future__ import annotations

import torch

__all__ = ["PHOTOS", "load_photos"]

PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
    "stereo_motorcycle", "retina", "colorwheel", "logo", "coins", "camera", "moon", "clock", "grass", "brick",
)  # fmt: skip


def load_photos(size: int | tuple[int, int] = 224) -> torch.Tensor:
    """Real RGB photographs from scikit-image, resized to ``size`` and ImageNet-normalised.

    Sixteen photographs that ship inside the scikit-image wheel (no download): people, animals,
    objects, microscopy, astronomy, textures. Grey images are repeated over three channels.

    Args:
        size: ``H`` or ``(H, W)`` of the output.

    Raises:
        ImportError: If scikit-image is not installed (``pip install scikit-image``).

    Shape:
        - output: :math:`(16, 3, H, W)`
    """
    try:
        from skimage import data
    except ImportError as error:  # pragma: no cover - depends on the environment
        message = 'real photos need scikit-image: pip install scikit-image (or pip install ".[photos]" in a clone)'
        raise ImportError(message) from error
    height, width = (size, size) if isinstance(size, int) else size
    images = []
    for name in PHOTOS:
        array = getattr(data, name)()
        array = array[0] if isinstance(array, tuple) else array  # stereo pairs
        image = torch.from_numpy(array.copy()).float()
        image = image[..., :3] if image.dim() == 3 else image[..., None].expand(*image.shape, 3)  # RGBA, grey
        image = image.permute(2, 0, 1)[None] / 255
        images.append(torch.nn.functional.interpolate(image, size=(height, width), mode="bilinear", antialias=True))
    batch = torch.cat(images)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (batch - mean) / std
