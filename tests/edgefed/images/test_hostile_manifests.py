"""Hostile model images (hypothesis): every malformed or hostile manifest or image directory
is refused with a one-line ``ImageError`` naming the cause, never another exception.

Manifests are signed with the trusted key, so that each reaches the checks past the
signature (a hostile signer's image, or a build fed a hostile recipe)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgefed.errors import ImageError
from edgefed.images import signing
from edgefed.images.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from edgefed.images.verify import verify_image

from .conftest import Keys, write_image

CASES = 150  # per test, CI-sized; python -m bench faults runs thousands
SETTINGS = settings(
    max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, -(10**400), 2**63, 0, -1, float("inf"), float("nan")]),
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(["../evil", "/etc/passwd", "x\x00y", "n" * 5000, "model.bin"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
file_names = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["../evil", "/etc/passwd", "a/../../b", "", ".", "a//b", "x\x00y", "n" * 300,
         "model.bin/", "./model.bin", "labels.txt\n", "sub/" * 300 + "x", "..", "a/./b"]
    ),
)  # fmt: skip


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    k = Keys(folder / "test.key", folder / "test.pub")
    signing.generate_key_pair(k.private, k.public)
    return k


@pytest.fixture
def fresh(keys: Keys) -> Callable[[], Iterator[Path]]:
    """A new signed tiny image in a temporary folder per example (hypothesis reruns)."""

    def make() -> Iterator[Path]:
        with tempfile.TemporaryDirectory() as folder:
            yield write_image(Path(folder) / "tiny", keys.load())

    return make


def resign(image: Path, keys: Keys, data: Any = None, raw: bytes | None = None) -> None:
    """Write ``data`` (or ``raw`` bytes) as the manifest, signed with the trusted key."""
    if raw is None:
        raw = yaml.safe_dump(data, allow_unicode=True).encode()
    (image / MANIFEST_NAME).write_bytes(raw)
    (image / SIGNATURE_NAME).write_bytes(signing.sign(keys.load(), raw))


def refused_cleanly(image: Path, keys: Keys) -> Manifest | None:
    """The manifest if the image verifies; None if refused with a one-line ImageError.
    Any other exception fails the test."""
    try:
        return verify_image(image, [keys.public])
    except ImageError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message, message
        return None


def manifest_of(image: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((image / MANIFEST_NAME).read_bytes())
    return data


@SETTINGS
@given(
    section=st.sampled_from(["", "input", "decoder", "source"]),
    key=st.text(max_size=12),
    value=values,
)
@example(section="", key="files", value={"\n\n    ": None})  # was a two-line error
def test_a_field_with_a_hostile_value(
    fresh: Callable[[], Iterator[Path]], keys: Keys, section: str, key: str, value: Any
) -> None:
    for image in fresh():
        data = manifest_of(image)
        where = data[section] if section else data
        where[key if key in where or not where else sorted(where)[len(key) % len(where)]] = value
        resign(image, keys, data)
        verified = refused_cleanly(image, keys)
        if verified is not None:  # only a value the schema takes
            Manifest.model_validate(verified.model_dump())


@SETTINGS
@given(name=file_names, point_model_at_it=st.booleans())
def test_hostile_file_names_never_leave_the_image(
    fresh: Callable[[], Iterator[Path]], keys: Keys, name: str, point_model_at_it: bool
) -> None:
    for image in fresh():
        data = manifest_of(image)
        data["files"][name] = data["files"]["model.bin"]
        if point_model_at_it:
            data["model_file"] = name
        resign(image, keys, data)
        verified = refused_cleanly(image, keys)
        if verified is not None:
            for listed in verified.files:
                inside = (image / listed).resolve()
                assert inside.is_relative_to(image.resolve()) and not (image / listed).is_symlink()


@SETTINGS
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(str.encode),
        st.sampled_from([10, 900, 30_000]).map(lambda n: b"[" * n + b"]" * n),
        st.sampled_from(
            [
                b"- a\n- list\n",
                b"!!python/object/apply:os.system ['true']\n",
                b"name: " + b"x" * 100_000 + b"\n",
                b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n",
            ]
        ),
    )
)
def test_manifest_bytes_that_are_not_a_manifest(
    fresh: Callable[[], Iterator[Path]], keys: Keys, raw: bytes
) -> None:
    for image in fresh():
        resign(image, keys, raw=raw)
        assert refused_cleanly(image, keys) is None


def _symlinked_model(image: Path) -> None:
    (image / "model.bin").unlink()
    (image / "model.bin").symlink_to("/etc/passwd")


def _dir_as_labels(image: Path) -> None:
    (image / "labels.txt").unlink()
    (image / "labels.txt").mkdir()


def _unlisted(image: Path) -> None:
    (image / "sub").mkdir()
    (image / "sub" / "extra.bin").write_bytes(b"unlisted")


@pytest.mark.parametrize(
    ("tamper", "cause"),
    [
        (
            lambda i: (i / "model.bin").write_bytes(b"other weights"),
            "sha256 mismatch for model.bin",
        ),
        (_symlinked_model, "model.bin is not a regular file"),
        (_dir_as_labels, "labels.txt is not a regular file"),
        (lambda i: (i / "labels.txt").unlink(), "missing file labels.txt"),
        (_unlisted, "files not listed in the manifest: sub/"),
        (lambda i: (i / SIGNATURE_NAME).write_bytes(b"\x00" * 64), "signature does not match"),
        (lambda i: (i / SIGNATURE_NAME).write_bytes(b""), "signature does not match"),
        (lambda i: (i / SIGNATURE_NAME).unlink(), "unsigned image"),
    ],
    ids=["hash", "symlink", "directory", "missing", "unlisted", "bad-sig", "empty-sig", "no-sig"],
)
def test_a_tampered_image_directory_names_its_cause(
    tmp_path: Path, keys: Keys, tamper: Callable[[Path], object], cause: str
) -> None:
    image = write_image(tmp_path / "tiny", keys.load())
    tamper(image)
    with pytest.raises(ImageError, match=cause) as caught:
        verify_image(image, [keys.public])
    assert "\n" not in str(caught.value)


def test_an_oversized_manifest_is_refused_before_it_is_parsed(tmp_path: Path, keys: Keys) -> None:
    image = write_image(tmp_path / "tiny", keys.load())
    resign(image, keys, raw=b"# " + b"x" * 70_000 + b"\n" + (image / MANIFEST_NAME).read_bytes())
    with pytest.raises(ImageError, match=r"manifest is 7\d{4} bytes, limit 65536"):
        verify_image(image, [keys.public])
