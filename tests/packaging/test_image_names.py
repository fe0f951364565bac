"""Every container image the manifests name (packaging/kubeedge, and the serverd replicas of
packaging/kubernetes) is one ``packaging/build oci`` builds.

The names come from the builder's own table (``IMAGES`` in packaging/build/oci.py) and the
tag from pyproject's version, which is what the builder tags with: a renamed image or a new
version cannot leave the manifests behind.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support.builder import builder_module
from tests.support.paths import REPO

KUBEEDGE = REPO / "packaging" / "kubeedge"
MANIFESTS = (KUBEEDGE, REPO / "packaging" / "kubernetes")  # each one kustomization
THIRD_PARTY = {"eclipse-mosquitto"}  # the broker's image is upstream's, not ours


@pytest.fixture(scope="module")
def oci() -> ModuleType:
    """packaging/build/oci.py, imported as the builder imports it."""
    return builder_module("oci", "oci.py")


def containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every container and initContainer anywhere in a manifest document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from containers(item)


def manifest_images(directories: tuple[Path, ...] = MANIFESTS) -> list[str]:
    images = []
    for path in sorted(p for d in directories for p in d.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            images += [c["image"] for c in containers(doc)]
    return images


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def test_every_manifest_image_is_built_by_packaging_build_oci(oci: ModuleType) -> None:
    built = {oci.image_ref(name, project_version()) for name in oci.IMAGES}
    ours = [i for i in manifest_images() if i.split(":")[0] not in THIRD_PARTY]
    assert ours, "the manifests name no image of ours"
    assert sorted(set(ours) - built) == []


def test_every_built_image_is_used_by_a_manifest(oci: ModuleType) -> None:
    used = {image.split(":")[0] for image in manifest_images()}
    assert sorted(set(oci.IMAGES) - used) == []


def test_the_builder_tags_with_the_project_version(oci: ModuleType) -> None:
    assert oci.version() == project_version()
    assert oci.image_ref("edgefed-edged", oci.version()) == f"edgefed-edged:{project_version()}"


@pytest.mark.parametrize("directory", MANIFESTS, ids=lambda d: d.name)
def test_kustomization_retags_only_built_images(oci: ModuleType, directory: Path) -> None:
    """``kustomize edit set image`` (docs/kubeedge.md) finds an entry for each image its
    manifests use, and only for those."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    entries = kustomization["images"]
    used = {image.split(":")[0] for image in manifest_images((directory,))} - THIRD_PARTY
    assert sorted(e["name"] for e in entries) == sorted(used)
    assert used <= set(oci.IMAGES)
    assert {e["newTag"] for e in entries} == {project_version()}


def test_a_containerfile_target_exists_for_every_image(oci: ModuleType) -> None:
    text = oci.CONTAINERFILE.read_text(encoding="utf-8")
    for target in oci.IMAGES.values():
        assert f" AS {target}\n" in text, target
