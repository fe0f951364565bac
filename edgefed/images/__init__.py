"""Model images: manifest, build from recipes, signature and hash verification."""

from pathlib import Path


def image_dir(images_dir: Path, ref: str) -> Path:
    """The image a config names: a path as given (it holds a ``/``), else the name of an
    image under ``images_dir``."""
    return Path(ref) if "/" in ref else images_dir / ref
