"""Build small signed model images around model files made in a test."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgefed.images import signing
from edgefed.images.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    DecoderSpec,
    InputSpec,
    Manifest,
    SourceSpec,
    manifest_to_yaml,
)
from edgefed.images.verify import sha256_file

SOURCE = SourceSpec(
    package="made-in-test", version="0", wheel_sha256="0" * 64, member="-", license="Apache-2.0"
)


def make_image(
    folder: Path,
    model_file: Path,
    *,
    task: str,
    driver: str,
    input_spec: dict[str, Any],
    decoder: dict[str, Any],
    labels: list[str] | None = None,
) -> tuple[Path, Path]:
    """Write a signed image into ``folder``; returns (image dir, public key to trust)."""
    folder.mkdir(parents=True)
    name = "model" + model_file.suffix
    shutil.copyfile(model_file, folder / name)
    files = {name: sha256_file(folder / name)}
    if labels is not None:
        (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        files["labels.txt"] = sha256_file(folder / "labels.txt")
    manifest = Manifest(
        name=folder.name,
        version="1",
        task=task,
        driver=driver,
        model_file=name,
        input=InputSpec(**input_spec),
        decoder=DecoderSpec(**decoder),
        labels="labels.txt" if labels is not None else None,
        files=files,
        source=SOURCE,
    )
    raw = manifest_to_yaml(manifest)
    (folder / MANIFEST_NAME).write_bytes(raw)
    public = folder.parent / f"{folder.name}.pub"
    key = signing.generate_key_pair(folder.parent / f"{folder.name}.key", public)
    (folder / SIGNATURE_NAME).write_bytes(signing.sign(key, raw))
    return folder, public
