"""The image commands: ``python -m edgefed.images ...`` and ``edged image ...``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefed.errors import EXIT_IMAGE, EXIT_OK
from edgefed.images import cli

from .conftest import Keys, Workspace

ImageFactory = Callable[..., Path]


def test_verify_command(
    image_factory: ImageFactory, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = image_factory(), image_factory("2.0.0")
    (bad / "labels.txt").write_text("x\n")
    assert cli.main(["verify", str(good), "--trust", str(keys.public)]) == EXIT_OK
    assert "ok" in capsys.readouterr().out
    assert cli.main(["verify", str(good), str(bad), "--trust", str(keys.public)]) == EXIT_IMAGE
    err = capsys.readouterr().err
    assert "FAIL" in err and "sha256 mismatch for labels.txt" in err


def test_build_install_rollback_commands(
    workspace: Workspace, image_factory: ImageFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace.write_recipe("tiny")
    common = [
        "--recipes",
        str(workspace.recipes),
        "--out",
        str(workspace.out),
        "--cache",
        str(workspace.cache),
        *[f"--pip-arg={a}" for a in workspace.pip_args],
    ]
    assert cli.main(["build", "--all", *common]) == EXIT_OK
    assert "tiny: built" in capsys.readouterr().out
    dev_pub = workspace.out / "keys" / "dev-signing.pub"
    assert (
        dev_pub.is_file()
        and (workspace.out / "keys" / "dev-signing.key").stat().st_mode & 0o77 == 0
    )
    assert cli.main(["build", "tiny", *common]) == EXIT_OK
    assert "tiny: up to date" in capsys.readouterr().out

    root = workspace.root / "installed"
    trust = ["--trust", str(dev_pub), "--trust", str(workspace.keys.public)]
    assert cli.main(["install", str(workspace.out / "tiny"), "--root", str(root), *trust]) == 0
    assert cli.main(["install", str(image_factory("7.0.0")), "--root", str(root), *trust]) == 0
    assert "into slot b" in capsys.readouterr().out
    assert cli.main(["rollback", "tiny", "--root", str(root), *trust]) == EXIT_OK
    assert "rolled back tiny to 1.0.0 in slot a" in capsys.readouterr().out


def test_errors_are_one_line_with_the_image_exit_code(
    workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["build", "nothere", "--recipes", str(workspace.recipes), "--out", str(workspace.out)]
    assert cli.main(args) == EXIT_IMAGE
    assert capsys.readouterr().err.strip().startswith("error: no recipe for nothere in")
    root = workspace.root / "installed"
    assert cli.main(["rollback", "tiny", "--root", str(root)]) == EXIT_IMAGE
    assert "tiny: not installed under" in capsys.readouterr().err


def test_add_subparsers_plugs_into_another_cli(image_factory: ImageFactory, keys: Keys) -> None:
    parser = argparse.ArgumentParser(prog="edged")
    cli.add_subparsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["image", "verify", str(image_factory()), "--trust", str(keys.public)])
    assert args.func(args) == EXIT_OK


def test_module_entry_point(image_factory: ImageFactory, keys: Keys) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefed.images",
            "verify",
            str(image_factory()),
            "--trust",
            str(keys.public),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parents[3],
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.startswith("ok ")


def test_edged_image_install_refuses_a_downgrade_and_rolls_back_an_unhealthy_switch(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = str(tmp_path / "installed")
    trust = ["--trust", str(keys.public)]

    def edged(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edged", "image", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert edged("install", str(image_factory("2.0.0")), "--root", root, *trust).returncode == 0
    old = edged("install", str(image_factory("1.0.0")), "--root", root, *trust)
    assert old.returncode == EXIT_IMAGE
    assert "version 1.0.0 is older than the installed 2.0.0; refused" in old.stderr
    sick = edged(
        "install", str(image_factory("3.0.0")), "--root", root, *trust,
        "--health-cmd", "sh -c 'echo model failed to load >&2; exit 4'",
    )  # fmt: skip
    assert sick.returncode == EXIT_IMAGE
    assert (
        "tiny 3.0.0: health check failed after the switch (sh exited 4: model failed to load); "
        "rolled back to 2.0.0 in slot a"
    ) in sick.stderr
    forced = edged("install", str(image_factory("1.0.0")), "--root", root, *trust, "--force")
    assert forced.returncode == EXIT_OK and "installed tiny 1.0.0 into slot b" in forced.stdout
    back = edged("rollback", "tiny", "--root", root, *trust)
    assert back.returncode == EXIT_OK and "rolled back tiny to 2.0.0 in slot a" in back.stdout


def test_build_quantize_refuses_a_model_onnx_cannot_read(
    workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace.write_recipe("tiny")  # model.onnx holding bytes that are no ONNX model
    common = [
        "--recipes",
        str(workspace.recipes),
        "--out",
        str(workspace.out),
        "--cache",
        str(workspace.cache),
        *[f"--pip-arg={a}" for a in workspace.pip_args],
    ]
    assert cli.main(["build", "tiny", "--quantize", "int8", *common]) == EXIT_IMAGE
    captured = capsys.readouterr()
    assert "tiny: built" in captured.out
    assert "tiny: quantisation failed" in captured.err
    assert (workspace.out / "tiny").is_dir()
    assert not list(workspace.out.glob("*int8*"))
    with pytest.raises(SystemExit):
        cli.main(["build", "tiny", "--quantize", "int8", "--calibration-frames", "0", *common])
    assert "must be at least 1" in capsys.readouterr().err
