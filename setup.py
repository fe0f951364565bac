"""Build hook: a wheel carries the device-plugin gRPC stubs generated from its ``api.proto``.

The stubs are git-ignored (``python -m drivers.deviceplugin.gen`` writes them into a
checkout), so a wheel built from a clean clone would lack them; ``build_py`` generates
them into the build directory with grpcio-tools (a build requirement in pyproject.toml).
Everything else about the build is in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTO = Path("drivers/deviceplugin/api.proto")


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install uses the checkout's own stubs
            return
        from grpc_tools import protoc

        well_known = Path(protoc.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            "-I.",
            f"-I{well_known}",
            f"--python_out={self.build_lib}",
            f"--pyi_out={self.build_lib}",
            f"--grpc_python_out={self.build_lib}",
            str(PROTO),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")


setup(cmdclass={"build_py": BuildPyWithStubs})
