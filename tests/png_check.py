"""A report's chart is a real picture: PNG signature, read back by matplotlib, a non-trivial size, not blank."""

from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, *, min_width: int = 400, min_height: int = 250) -> None:
    import numpy as np
    from matplotlib import image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pixels = image.imread(path)
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= min_height, (path, pixels.shape)
    assert float(np.std(pixels[..., :3])) > 0.01, f"{path} is blank"
