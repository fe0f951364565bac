"""OpenVINO driver: runs ``.onnx`` model files on Intel's NPU, GPU or CPU through OpenVINO.

The configured ``devices`` (``CPU``, ``NPU``, ``GPU``, ``GPU.1``, ``AUTO``, ...) are this
driver's devices, in order of preference; one the installed runtime cannot see is listed
unhealthy with the reason. OpenVINO reads the ONNX file itself, so the same model images
as the onnxruntime driver load here. ``performance_hint`` sets OpenVINO's latency or
throughput mode; ``precision: f32`` (the default) keeps fp32 arithmetic so outputs agree
with onnxruntime's, where the CPU plug-in would otherwise pick bf16 on CPUs that have it.
``cache_dir`` holds one compiled blob per model file and device, not one per version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from edgefed.driver import (
    DeviceInfo,
    Driver,
    DriverConfig,
    LoadedModel,
    TensorSpec,
    import_sdk,
    one_line,
)
from edgefed.errors import DriverError

log = logging.getLogger(__name__)

AUTO = "AUTO"


class OpenVinoConfig(DriverConfig):
    type: Literal["openvino"] = Field(description="Driver type")
    devices: list[str] = Field(
        default_factory=lambda: ["CPU"],
        min_length=1,
        description="OpenVINO devices to offer, in order of preference: CPU, NPU, GPU "
        "(GPU.0, GPU.1, ... for one of several) or AUTO (OpenVINO picks among those present)",
    )
    performance_hint: Literal["latency", "throughput"] = Field(
        "latency", description="OpenVINO PERFORMANCE_HINT: latency of one frame or throughput"
    )
    precision: Literal["f32", "native"] = Field(
        "f32",
        description="f32 keeps fp32 arithmetic (outputs agree with onnxruntime); native lets "
        "the device use its own precision (bf16 on such CPUs, f16 on GPU/NPU)",
    )
    num_threads: int = Field(
        1, ge=0, description="CPU inference threads of one model (0 lets OpenVINO decide)"
    )
    cache_dir: Path | None = Field(
        None,
        description="Where OpenVINO caches compiled models (NPU/GPU compile is slow); "
        "one per model file and device, a new version's replaces the old one's",
    )


def _family(device: str) -> str:
    """``GPU.1`` -> ``GPU``: the plug-in a device name belongs to."""
    return device.partition(".")[0].partition(":")[0].upper()


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
    names = port.get_names()
    name = port.get_any_name() if names else f"output{port.get_index()}"
    return TensorSpec(name, shape, np.dtype(port.get_element_type().to_dtype()).name)


def _cache_key(model_file: Path, device: str) -> str:
    """The cache directory name of a model file on a device. The same for every version
    edged loads at ``<images>/<name>/model.onnx``, since the A/B slot link is not resolved;
    another for any other path or device (a fallback chain compiles one file for NPU and
    CPU, and neither compile may prune the other's blob). Readable, and a hash of both."""
    path = os.path.abspath(model_file)
    digest = hashlib.sha256(os.fsencode(path) + b"\0" + device.upper().encode()).hexdigest()
    readable = f"{Path(path).parent.name}-{model_file.stem}-{device.upper()}"
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', readable)[-64:]}-{digest[:16]}"


_Stamps = dict[str, tuple[int, int]]


def _stamps(directory: Path) -> _Stamps | None:
    """The files in ``directory`` by name, with inode and mtime (a rewrite changes them);
    None, logged, when it cannot be listed: then nothing is pruned."""
    out = {}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    out[entry.name] = (st.st_ino, st.st_mtime_ns)
    except OSError as exc:
        log.warning("openvino: cannot list %s, not pruning it: %s", directory, exc)
        return None
    return out


class CompileCache:
    """OpenVINO's ``CACHE_DIR``, kept to the blobs the loaded models need.

    OpenVINO names a blob after the model's contents and deletes none, so each federated
    version would leave one more (18 MB each for efficientnet_lite0). Each model file (on
    each device) gets a directory of its own; a compile that adds a file there was a miss,
    i.e. a new version, and the files there before it (older versions) are deleted. A hit
    writes nothing and prunes nothing, so a restart with the same models reads the cache.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # Compiles with the cache take turns: a prune never deletes a blob a concurrent
        # compile is writing, and OpenVINO's cache I/O sets the process locale to "C" and
        # back, which is not thread-safe: 8 loads at once left the whole process in the
        # "C" locale (its text I/O ASCII; tests/drivers/test_openvino.py).
        self._turns = threading.Lock()

    def _directory(self, key: str, model_file: Path) -> Path | None:
        """The directory ``key`` names, made if need be; None (logged) when it cannot be,
        since OpenVINO refuses to compile with a CACHE_DIR it cannot create."""
        directory = self.root / key
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning(
                "openvino: %s runs without the compiled-model cache: cannot make %s: %s",
                model_file,
                directory,
                exc,
            )
            return None
        return directory

    @contextmanager
    def compiling(self, model_file: Path, device: str) -> Iterator[Path | None]:
        """Yields the CACHE_DIR to compile ``model_file`` with (None: compile uncached);
        once the compile has succeeded, drops the blobs of older versions if it wrote one."""
        key = _cache_key(model_file, device)
        with self._turns:
            directory = self._directory(key, model_file)
            before = None if directory is None else _stamps(directory)
            yield directory
            if directory is not None and before is not None:
                _prune(directory, before)


def _prune(directory: Path, before: _Stamps) -> None:
    """Delete the files ``before`` lists that a compile left as they were, if it added one
    (a miss); a failure is logged, never raised: the model is loaded either way."""
    after = _stamps(directory)
    if after is None or after.keys() <= before.keys():  # a hit, or the blob was not written
        return
    for name, stamp in before.items():
        if after.get(name) != stamp:  # rewritten by this compile, or gone already
            continue
        try:
            (directory / name).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("openvino: cannot drop an older compiled blob: %s", exc)
        else:
            log.info("openvino: dropped %s, compiled from an older version", directory / name)


class OpenVinoModel(LoadedModel):
    """One compiled model; each concurrent caller gets an infer request of its own."""

    def __init__(self, compiled: Any, path: Path, device: str) -> None:
        self._compiled: Any | None = compiled
        self._path = path
        self.device = device
        self.inputs = [_spec(p) for p in compiled.inputs]
        self.outputs = [_spec(p) for p in compiled.outputs]
        self._idle: list[Any] = []  # infer requests not in use (one is not thread-safe)
        self._lock = threading.Lock()

    def _request(self) -> Any:
        with self._lock:
            if self._compiled is None:
                raise DriverError(f"{self._path.name}: model is closed")
            return self._idle.pop() if self._idle else self._compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self._request()
        try:
            values = request.infer(feeds, share_inputs=True, share_outputs=False)
            out = {spec.name: values[i] for i, spec in enumerate(self.outputs)}
        except Exception as exc:  # OpenVINO raises RuntimeError/TypeError with C++ messages
            raise DriverError(f"{self._path.name}: run failed: {one_line(exc)}") from exc
        finally:
            with self._lock:
                self._idle.append(request)
        return out

    def close(self) -> None:
        """Drop the compiled model; OpenVINO frees it once runs in flight have returned."""
        with self._lock:
            self._compiled = None
            self._idle.clear()


class OpenVinoDriver(Driver[OpenVinoConfig]):
    type: ClassVar[str] = "openvino"
    config_model = OpenVinoConfig
    file_suffixes: ClassVar[tuple[str, ...]] = (".onnx",)

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self._ov = import_sdk(self.type, "openvino")
        try:
            self._core = self._ov.Core()
        except Exception as exc:  # plug-in discovery failed inside the runtime
            raise DriverError(f"openvino: runtime failed to start: {one_line(exc)}") from exc
        root = self.config.cache_dir
        self._cache = CompileCache(root) if root is not None else None

    def _present(self) -> list[str]:
        try:
            return list(self._core.available_devices)
        except Exception as exc:
            raise DriverError(f"openvino: cannot list devices: {one_line(exc)}") from exc

    def _full_name(self, device: str) -> str:
        try:
            return str(self._core.get_property(device, "FULL_DEVICE_NAME"))
        except Exception:  # a plug-in without the property still names itself
            return device

    def devices(self) -> list[DeviceInfo]:
        present = self._present()
        families = {_family(p) for p in present}
        out = []
        for name in self.config.devices:
            if name.upper() == AUTO:
                healthy = bool(present)
                detail = f"AUTO over {', '.join(present)}" if present else "no device present"
            elif name in present or (name == _family(name) and name in families):
                healthy, detail = True, self._full_name(name)
            else:
                healthy = False
                detail = f"{name} is not present (OpenVINO sees: {', '.join(present) or 'none'})"
            out.append(DeviceInfo(name, _family(name).lower(), healthy, detail))
        return out

    def _pick(self, device: str | None) -> str:
        devs = self.devices()
        if device is None:
            healthy = [d for d in devs if d.healthy]
            if not healthy:
                raise DriverError("openvino: none of the configured devices is present")
            return healthy[0].id
        for dev in devs:
            if dev.id.upper() == device.upper():
                if not dev.healthy:
                    raise DriverError(f"openvino: device {device!r}: {dev.detail}")
                return dev.id
        known = ", ".join(d.id for d in devs)
        raise DriverError(f"openvino: unknown device {device!r} (configured: {known})")

    def _properties(self, device: str, cache_dir: Path | None) -> dict[str, str]:
        props = {"PERFORMANCE_HINT": self.config.performance_hint.upper()}
        if cache_dir is not None:
            props["CACHE_DIR"] = str(cache_dir)
        if self.config.precision == "f32":  # AUTO hands it on to the device it picks
            props["INFERENCE_PRECISION_HINT"] = "f32"
        if _family(device) == "CPU":  # the other plug-ins reject this CPU-only property
            props["INFERENCE_NUM_THREADS"] = str(self.config.num_threads)
        return props

    def load(self, model_file: Path, device: str | None = None) -> LoadedModel:
        name = self._pick(device)
        if not model_file.is_file():
            raise DriverError(f"cannot load {model_file}: no such file")
        if model_file.suffix not in self.file_suffixes:
            raise DriverError(f"openvino: cannot load {model_file.name}: only .onnx files")
        with self._cache_for(model_file, name) as cache_dir:
            try:
                model = self._core.read_model(str(model_file))
                compiled = self._core.compile_model(model, name, self._properties(name, cache_dir))
            except Exception as exc:  # OpenVINO raises RuntimeError with C++ messages
                raise DriverError(f"cannot load {model_file}: {one_line(exc)}") from exc
        return OpenVinoModel(compiled, model_file, name)

    def _cache_for(self, model_file: Path, device: str) -> AbstractContextManager[Path | None]:
        if self._cache is None:
            return nullcontext()
        return self._cache.compiling(model_file, device)
