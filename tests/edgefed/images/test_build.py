"""The image builder with real pip (offline, a local wheelhouse), real venvs and real keys."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefed.errors import ImageError
from edgefed.images.build import imagenet_labels
from edgefed.images.recipe import load_recipe
from edgefed.images.verify import load_labels, verify_image

from .conftest import MODEL_BYTES, Workspace, make_wheel, sha256

REPO = Path(__file__).parents[3]


def test_build_from_a_recipe_verifies(workspace: Workspace) -> None:
    result = workspace.builder().build(workspace.write_recipe("tiny"))
    assert result.built and result.path == workspace.out / "tiny"
    manifest = verify_image(result.path, [workspace.keys.public])
    assert (result.path / manifest.model_file).read_bytes() == MODEL_BYTES
    assert manifest.model_file == "model.onnx"
    assert load_labels(result.path, manifest) == ["cat", "dog"]
    assert manifest.source.wheel_sha256 == workspace.tiny_sha256
    assert manifest.source.member == "tinymodel/model.onnx"
    assert manifest.decoder.params == {"k": 2}
    assert set(manifest.files) == {"model.onnx", "labels.txt"}


def test_up_to_date_build_needs_no_download(workspace: Workspace) -> None:
    recipe = workspace.write_recipe("tiny")
    workspace.builder().build(recipe)
    shutil.rmtree(workspace.wheelhouse)
    shutil.rmtree(workspace.cache / "wheels")
    assert workspace.builder().build(recipe).built is False


def test_changed_recipe_rebuilds_from_the_wheel_cache(workspace: Workspace) -> None:
    workspace.builder().build(workspace.write_recipe("tiny"))
    shutil.rmtree(workspace.wheelhouse)
    result = workspace.builder().build(workspace.write_recipe("tiny", version="1.0.1"))
    assert result.built
    assert verify_image(result.path, [workspace.keys.public]).version == "1.0.1"


def test_damaged_output_is_rebuilt(workspace: Workspace) -> None:
    recipe = workspace.write_recipe("tiny")
    result = workspace.builder().build(recipe)
    (result.path / "model.onnx").write_bytes(b"damaged")
    assert workspace.builder().build(recipe).built
    verify_image(result.path, [workspace.keys.public])


def test_bad_wheel_sha256_is_an_image_error(workspace: Workspace) -> None:
    recipe = workspace.write_recipe("tiny")
    text = recipe.read_text()
    recipe.write_text(text.replace(workspace.tiny_sha256, "ab" * 32))
    with pytest.raises(
        ImageError,
        match=r"tinymodel-1.0.0-py3-none-any.whl: sha256 \w+ does not "
        r"match the pinned abab",
    ):
        workspace.builder().build(recipe)
    assert not (workspace.out / "tiny").exists()
    assert not list((workspace.cache / "wheels").glob("*.whl"))


def test_unknown_package_names_pip_failure(workspace: Workspace) -> None:
    wheels = {
        "tiny": {"package": "nosuchpkg", "version": "1.0.0", "sha256": "0" * 64, "license": "MIT"}
    }
    recipe = workspace.write_recipe("tiny", wheels=wheels)
    with pytest.raises(ImageError, match=r"pip download nosuchpkg==1.0.0 failed: "):
        workspace.builder().build(recipe)


def test_missing_wheel_member(workspace: Workspace) -> None:
    model = {"kind": "extract", "wheel": "tiny", "member": "tinymodel/nothere.onnx"}
    with pytest.raises(ImageError, match=r"has no member tinymodel/nothere\.onnx"):
        workspace.builder().build(workspace.write_recipe("tiny", model=model))


def test_export_step_runs_in_its_own_venv_and_is_cached(workspace: Workspace) -> None:
    make_wheel(
        workspace.wheelhouse,
        "tinyexport",
        "2.0.0",
        {
            "tinyexport/__init__.py": b"def convert(data):\n    return data[::-1]\n",
        },
    )
    script = workspace.recipes / "export_tiny.py"
    script.write_text(
        "import argparse, pathlib, sys, tinyexport\n"
        "p = argparse.ArgumentParser()\n"
        "p.add_argument('--weights', type=pathlib.Path)\n"
        "p.add_argument('--out', type=pathlib.Path)\n"
        "a = p.parse_args()\n"
        "assert 'edged' not in sys.modules\n"
        "a.out.write_bytes(tinyexport.convert(a.weights.read_bytes()))\n"
    )
    wheels = {
        "tiny": {
            "package": "tinymodel",
            "version": "1.0.0",
            "license": "Apache-2.0",
            "sha256": workspace.tiny_sha256,
        },
        "exporter": {
            "package": "tinyexport",
            "version": "2.0.0",
            "license": "MIT",
            "sha256": sha256(workspace.wheelhouse / "tinyexport-2.0.0-py3-none-any.whl"),
        },
    }
    model = {
        "kind": "export",
        "wheel": "tiny",
        "member": "tinymodel/model.onnx",
        "script": "export_tiny.py",
        "requirements": [],
        "install": ["exporter"],
        "output": "model.onnx",
    }
    result = workspace.builder().build(workspace.write_recipe("tiny", wheels=wheels, model=model))
    manifest = verify_image(result.path, [workspace.keys.public])
    assert (result.path / "model.onnx").read_bytes() == MODEL_BYTES[::-1]
    assert [s.package for s in manifest.extra_sources] == ["tinyexport"]
    assert "exported by export_tiny.py" in manifest.source.member

    shutil.rmtree(workspace.cache / "export-venv")
    recipe = workspace.write_recipe("tiny", wheels=wheels, model=model, version="1.0.1")
    assert workspace.builder().build(recipe).built
    assert not (workspace.cache / "export-venv").exists(), "a cached export must not rerun"


def test_missing_export_script_is_reported(workspace: Workspace) -> None:
    model = {
        "kind": "export",
        "wheel": "tiny",
        "member": "tinymodel/model.onnx",
        "script": "gone.py",
        "requirements": [],
        "output": "model.onnx",
    }
    with pytest.raises(ImageError, match=r"^tiny: cannot read export script .*gone\.py$"):
        workspace.builder().build(workspace.write_recipe("tiny", model=model))


def test_failing_export_script_is_reported(workspace: Workspace) -> None:
    (workspace.recipes / "broken.py").write_text("raise SystemExit('cannot export: no luck')\n")
    model = {
        "kind": "export",
        "wheel": "tiny",
        "member": "tinymodel/model.onnx",
        "script": "broken.py",
        "requirements": [],
        "output": "model.onnx",
    }
    with pytest.raises(ImageError, match=r"export script broken.py failed: cannot export: no luck"):
        workspace.builder().build(workspace.write_recipe("tiny", model=model))
    assert not (workspace.out / "tiny").exists()


def doc_recipe() -> dict[str, Any]:
    """The example recipe of docs/model-images.md ("Write a recipe")."""
    text = (REPO / "docs" / "model-images.md").read_text(encoding="utf-8")
    block = text.split("## Write a recipe", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    recipe: dict[str, Any] = yaml.safe_load(block)
    return recipe


@pytest.mark.parametrize(
    ("decoder", "message"),
    [
        (
            {"type": "yolo", "params": {"score_threshold": 0.25}},
            r"tiny\.yaml: invalid recipe: decoder 'yolo': version: Field required$",
        ),
        (
            {"type": "yolo", "params": {"version": 7}},
            r"decoder 'yolo': version: Input should be 5 or 8$",
        ),
        (
            {"type": "softmax_topk", "params": {"k": 0, "topk": 3}},
            r"decoder 'softmax_topk': k: Input should be greater than or equal to 1; "
            r"topk: Extra inputs are not permitted$",
        ),
        ({"type": "yolov8", "params": {}}, r"unknown decoder 'yolov8' \(known: .*yolo\)$"),
    ],
)
def test_bad_decoder_fails_the_build_before_any_download(
    workspace: Workspace, decoder: dict[str, object], message: str
) -> None:
    """What the runner would refuse when the device opens the image is refused here."""
    recipe = workspace.write_recipe("tiny", input=doc_recipe()["input"], decoder=decoder)
    with pytest.raises(ImageError, match=message):
        workspace.builder().build(recipe)
    assert not (workspace.out / "tiny").exists()
    assert not list((workspace.cache / "wheels").glob("*.whl"))


def test_the_documented_recipe_decoder_builds(workspace: Workspace) -> None:
    doc = doc_recipe()
    recipe = workspace.write_recipe(
        "tiny", task=doc["task"], input=doc["input"], decoder=doc["decoder"]
    )
    manifest = verify_image(workspace.builder().build(recipe).path, [workspace.keys.public])
    assert manifest.decoder.model_dump() == doc["decoder"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": {"kind": "extract", "wheel": "nope", "member": "x"}}, "'nope' is not one of"),
        (
            {
                "wheels": {
                    "tiny": {"package": "p", "version": "1", "sha256": "xyz", "license": "MIT"}
                }
            },
            "wheels.tiny.sha256",
        ),
        (
            {
                "model": {
                    "kind": "export",
                    "wheel": "tiny",
                    "member": "m",
                    "script": "s.py",
                    "requirements": ["torch"],
                    "output": "model.onnx",
                }
            },
            "pinned with ==",
        ),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"name": "other"}, "differs from its file name"),
    ],
)
def test_bad_recipes_are_one_line_errors(
    workspace: Workspace, overrides: dict[str, object], message: str
) -> None:
    recipe = workspace.write_recipe("tiny", **overrides)
    with pytest.raises(ImageError, match=message) as info:
        load_recipe(recipe)
    assert "\n" not in str(info.value)


def test_unused_wheel_pin_is_rejected(workspace: Workspace) -> None:
    wheel = {"package": "tinymodel", "version": "1.0.0", "sha256": "0" * 64, "license": "MIT"}
    recipe = workspace.write_recipe("tiny", wheels={"tiny": wheel, "spare": wheel})
    with pytest.raises(ImageError, match=r"wheels \['spare'\] are pinned but not used"):
        load_recipe(recipe)


def test_imagenet_labels_take_the_first_lemma_in_synset_order() -> None:
    synsets = "n02\nn01\n"
    lemmas = "n01\ttench, Tinca tinca\nn02\tgoldfish, Carassius auratus\nn03\tunused\n"
    assert imagenet_labels(synsets, lemmas) == ["goldfish", "tench"]
    with pytest.raises(ImageError, match="synset n09 has no lemma"):
        imagenet_labels("n09\n", lemmas)


def test_real_recipes_are_valid() -> None:
    recipes = sorted((REPO / "firmware-images" / "recipes").glob("*.yaml"))
    names = {load_recipe(p).name for p in recipes}
    assert {
        "pose_detector",
        "face_detector",
        "pose_landmarks",
        "efficientnet_lite0",
        "text_detector",
    } <= names
