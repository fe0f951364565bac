"""A/B slot install and rollback on a real directory tree."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgefed.errors import ImageError
from edgefed.images import health, signing
from edgefed.images.install import active_slot, install_image, rollback_image, version_key
from edgefed.images.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from edgefed.images.verify import read_manifest, verify_image

from .conftest import Keys

ImageFactory = Callable[..., Path]


def test_install_then_upgrade_then_rollback(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"
    trust = [keys.public]

    _, state = install_image(image_factory("1.0.0"), root, trust)
    assert state.active == "a" and state.path == root / "tiny"
    assert verify_image(root / "tiny", trust).version == "1.0.0"

    _, state = install_image(image_factory("2.0.0"), root, trust)
    assert state.active == "b"
    assert read_manifest(root / "tiny").version == "2.0.0"
    assert os.readlink(root / "slots" / "tiny" / "current") == "b"

    manifest, state = rollback_image(root, "tiny", trust)
    assert (manifest.version, state.active) == ("1.0.0", "a")
    assert verify_image(root / "tiny", trust).version == "1.0.0"

    manifest, _ = rollback_image(root, "tiny", trust)
    assert manifest.version == "2.0.0"

    install_image(image_factory("3.0.0"), root, trust)  # replaces the inactive slot (1.0.0)
    assert active_slot(root, "tiny") == "a"
    assert read_manifest(root / "tiny").version == "3.0.0"
    assert read_manifest(root / "slots" / "tiny" / "b").version == "2.0.0"


def test_bad_image_is_not_installed(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"
    install_image(image_factory("1.0.0"), root, [keys.public])
    bad = image_factory("2.0.0")
    (bad / "model.bin").write_bytes(b"corrupt")
    with pytest.raises(ImageError, match=r"sha256 mismatch for model\.bin"):
        install_image(bad, root, [keys.public])
    assert read_manifest(root / "tiny").version == "1.0.0"
    with pytest.raises(ImageError, match="unsigned image"):
        install_image(image_factory("3.0.0", signed=False), root, [keys.public])
    assert active_slot(root, "tiny") == "a"


def test_rollback_needs_a_previous_good_image(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"
    with pytest.raises(ImageError, match="tiny: not installed under"):
        rollback_image(root, "tiny", [keys.public])
    install_image(image_factory("1.0.0"), root, [keys.public])
    with pytest.raises(ImageError, match="tiny: no previous image to roll back to"):
        rollback_image(root, "tiny", [keys.public])

    install_image(image_factory("2.0.0"), root, [keys.public])
    (root / "slots" / "tiny" / "a" / "labels.txt").write_text("tampered\n")
    with pytest.raises(ImageError, match=r"sha256 mismatch for labels\.txt"):
        rollback_image(root, "tiny", [keys.public])
    assert read_manifest(root / "tiny").version == "2.0.0"


def test_a_plain_directory_in_the_way_is_reported(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"
    (root / "tiny").mkdir(parents=True)
    with pytest.raises(ImageError, match="exists and is not the slot link"):
        install_image(image_factory(), root, [keys.public])


def sign_with(image: Path, keys: Keys) -> Path:
    raw = (image / MANIFEST_NAME).read_bytes()
    (image / SIGNATURE_NAME).write_bytes(signing.sign(keys.load(), raw))
    return image


def tampered(image: Path) -> Path:
    with (image / "model.bin").open("ab") as fh:
        fh.write(b"\0")
    return image


def test_each_bad_image_kind_is_refused_with_its_reason(
    image_factory: ImageFactory, keys: Keys, other_keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"
    trust = [keys.public]
    install_image(image_factory("2.0.0"), root, trust)
    bad: list[tuple[Path, str]] = [
        (image_factory("3.0.0", signed=False), "unsigned image"),
        (sign_with(image_factory("3.0.0"), other_keys), "signature does not match any trusted key"),
        (tampered(image_factory("3.0.0")), r"sha256 mismatch for model\.bin"),
        (image_factory("1.9.9"), "version 1.9.9 is older than the installed 2.0.0; refused"),
    ]
    for image, reason in bad:
        with pytest.raises(ImageError, match=reason):
            install_image(image, root, trust)
        assert read_manifest(root / "tiny").version == "2.0.0" and active_slot(root, "tiny") == "a"
    assert not (root / "slots" / "tiny" / "b").exists()  # nothing half-copied left behind


def test_a_downgrade_is_installed_when_forced_and_a_reinstall_is_not_one(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"
    install_image(image_factory("2.0"), root, [keys.public])
    install_image(image_factory("2.0.0"), root, [keys.public])  # same release: allowed
    _, state = install_image(image_factory("1.5.0"), root, [keys.public], force=True)
    assert state.active == "a" and read_manifest(root / "tiny").version == "1.5.0"


def test_versions_compare_by_numeric_release() -> None:
    assert version_key("1.10.0") > version_key("1.9.9")
    assert version_key("v2") == version_key("2.0.0") == version_key("2.0.0+fl3")
    with pytest.raises(ImageError, match="no numeric release"):
        version_key("latest")


def test_failed_health_check_after_the_switch_rolls_back_by_itself(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"
    trust = [keys.public]
    seen: list[tuple[str, str]] = []

    def healthy(manifest: Manifest, path: Path) -> None:
        seen.append((manifest.version, read_manifest(path).version))

    def unhealthy(manifest: Manifest, path: Path) -> None:
        seen.append((manifest.version, read_manifest(path).version))
        raise ImageError("readyz answered 503")

    install_image(image_factory("1.0.0"), root, trust, health=healthy)
    with pytest.raises(ImageError) as caught:
        install_image(image_factory("2.0.0"), root, trust, health=unhealthy)
    assert str(caught.value) == (
        "tiny 2.0.0: health check failed after the switch (readyz answered 503); "
        "rolled back to 1.0.0 in slot a"
    )
    assert seen == [("1.0.0", "1.0.0"), ("2.0.0", "2.0.0")]  # checked on the switched path
    assert active_slot(root, "tiny") == "a" and read_manifest(root / "tiny").version == "1.0.0"
    # the failed version stays in the inactive slot: a manual rollback could go to it
    assert read_manifest(root / "slots" / "tiny" / "b").version == "2.0.0"


def test_failed_health_check_of_a_first_install_leaves_nothing_installed(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"

    def unhealthy(_manifest: Manifest, _path: Path) -> None:
        raise ImageError("model did not load")

    with pytest.raises(ImageError, match="removed it"):
        install_image(image_factory("1.0.0"), root, [keys.public], health=unhealthy)
    assert active_slot(root, "tiny") is None and not os.path.lexists(root / "tiny")
    install_image(image_factory("1.0.0"), root, [keys.public])  # a later install works
    assert read_manifest(root / "tiny").version == "1.0.0"


class Readyz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def readyz() -> Iterator[tuple[str, type[Readyz]]]:
    handler = type("Handler", (Readyz,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/readyz", handler
    server.shutdown()
    server.server_close()


def test_health_url_and_command_decide_over_the_switch(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path, readyz: tuple[str, type[Readyz]]
) -> None:
    url, handler = readyz
    root = tmp_path / "installed"
    trust = [keys.public]
    is_two = health.command(["sh", "-c", 'test "$EDGEFED_IMAGE_VERSION" = 2.0.0'], 10)
    install_image(image_factory("1.0.0"), root, trust, health=health.http(url, 5))
    install_image(
        image_factory("2.0.0"), root, trust, health=health.chain([is_two, health.http(url, 5)])
    )
    handler.status = 503
    with pytest.raises(ImageError, match=r"not healthy within 1 s \(last: HTTP 503\)\); rolled"):
        install_image(image_factory("3.0.0"), root, trust, health=health.http(url, 1, 0.2))
    with pytest.raises(ImageError, match=r"exited 1\); rolled back to 2\.0\.0 in slot b"):
        install_image(image_factory("3.0.0"), root, trust, health=is_two)
    assert read_manifest(root / "tiny").version == "2.0.0"
