"""LiteRT (TensorFlow Lite) driver: runs ``.tflite`` model files on the CPU or a delegate.

The CPU path uses LiteRT's built-in XNNPACK kernels. An NPU vendor's LiteRT delegate
(an external-delegate shared library) is named in ``delegate`` with its
``delegate_options`` and appears as one more device. ``ai_edge_litert`` is imported
when the driver starts, never at module import.

An Interpreter is not thread-safe, so each loaded model keeps a pool of interpreters
that grows on contention up to ``interpreters_per_model``: a run borrows an idle one,
so that many runs of the model proceed at once (``invoke`` releases the GIL). On two
cores two single-threaded interpreters out-run one interpreter behind a lock by
~25-60% when two workers share a model (docs/drivers.md).
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Callable
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

CPU_DEVICE = "cpu"
WAIT_SLICE_S = 0.2  # a run waiting for a busy interpreter re-checks close() this often
DELEGATE_SYMBOLS = ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate")


class LiteRTConfig(DriverConfig):
    type: Literal["litert"] = Field(description="Driver type")
    num_threads: int = Field(1, ge=1, description="CPU threads of one interpreter (XNNPACK)")
    delegate: Path | None = Field(
        None, description="Path of an external LiteRT delegate library (.so) of an NPU"
    )
    delegate_options: dict[str, str] = Field(
        default_factory=dict, description="Options passed to the external delegate as given"
    )
    interpreters_per_model: int = Field(
        2,
        ge=1,
        le=16,
        description="Most interpreters per loaded model (made when concurrent runs need "
        "them); runs beyond this count wait",
    )


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature", detail["shape"])
    shape = tuple(int(d) for d in signature)
    return TensorSpec(detail["name"], shape, np.dtype(detail["dtype"]).name)


def _check_delegate_library(path: Path) -> None:
    """Refuse a file that is not an external delegate before LiteRT half-builds one."""
    if not path.is_file():
        raise DriverError(f"litert: delegate {path}: no such file")
    try:
        library = ctypes.CDLL(str(path))
    except OSError as exc:
        raise DriverError(f"litert: delegate {path}: {one_line(exc)}") from exc
    missing = [s for s in DELEGATE_SYMBOLS if not hasattr(library, s)]
    if missing:
        raise DriverError(
            f"litert: delegate {path}: not a LiteRT external delegate (no {', '.join(missing)})"
        )


class _Interpreter:
    """One LiteRT interpreter with its tensors resolved by name."""

    def __init__(self, interpreter: Any) -> None:
        self.it = interpreter
        self.it.allocate_tensors()
        self.inputs = {d["name"]: d for d in interpreter.get_input_details()}
        self.outputs = [(d["name"], d["index"]) for d in interpreter.get_output_details()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in feeds.items():
            detail = self.inputs.get(name)
            if detail is None:
                raise ValueError(f"unknown input {name!r} (inputs: {', '.join(self.inputs)})")
            if tuple(value.shape) != tuple(detail["shape"]):
                self._resize(detail, tuple(value.shape))
            self.it.set_tensor(detail["index"], value)
        self.it.invoke()
        return {name: self.it.get_tensor(index) for name, index in self.outputs}

    def _resize(self, detail: dict[str, Any], shape: tuple[int, ...]) -> None:
        """Resize a dynamic input; a shape the model cannot take is refused before LiteRT."""
        signature = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
        fits = len(shape) == len(signature) and all(
            s in (-1, v) for s, v in zip(signature, shape, strict=True)
        )
        if not fits:
            raise ValueError(f"input {detail['name']!r} has shape {shape}, model takes {signature}")
        self.it.resize_tensor_input(detail["index"], list(shape))
        self.it.allocate_tensors()
        detail["shape"] = np.array(shape)


class LiteRTModel(LoadedModel):
    """A pool of interpreters of one model file: ``run`` borrows an idle one, or makes one
    more while fewer than ``limit`` exist, or waits for one to come back."""

    def __init__(
        self, make: Callable[[], _Interpreter], limit: int, path: Path, device: str
    ) -> None:
        first = make()
        self.device = device
        self.inputs = [_spec(d) for d in first.it.get_input_details()]
        self.outputs = [_spec(d) for d in first.it.get_output_details()]
        self._path = path
        self._make = make
        self._limit = limit
        self._made = 1
        self._closed = False
        self._lock = threading.Lock()
        self._idle: queue.LifoQueue[_Interpreter] = queue.LifoQueue()
        self._idle.put(first)

    def _borrow(self) -> _Interpreter:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._made < self._limit and not self._closed
            if grow:
                self._made += 1
        if grow:
            try:
                return self._make()
            except Exception:
                with self._lock:
                    self._made -= 1
                raise
        while not self._closed:
            try:
                return self._idle.get(timeout=WAIT_SLICE_S)
            except queue.Empty:
                continue
        raise DriverError(f"{self._path.name}: model is closed")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise DriverError(f"{self._path.name}: model is closed")
        try:
            interpreter = self._borrow()
        except (ValueError, RuntimeError) as exc:
            cause = one_line(exc)
            raise DriverError(f"{self._path.name}: cannot make an interpreter: {cause}") from exc
        try:
            return interpreter.run(feeds)
        except (ValueError, RuntimeError) as exc:
            raise DriverError(f"{self._path.name}: run failed: {one_line(exc)}") from exc
        finally:
            if not self._closed:
                self._idle.put(interpreter)

    def close(self) -> None:
        """Drop every idle interpreter (and with them any delegate's device memory)."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                return


class LiteRTDriver(Driver[LiteRTConfig]):
    type: ClassVar[str] = "litert"
    config_model = LiteRTConfig
    file_suffixes: ClassVar[tuple[str, ...]] = (".tflite",)

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self._litert = import_sdk(self.type, "ai_edge_litert.interpreter")

    def _delegate_id(self) -> str | None:
        return self.config.delegate.stem.removeprefix("lib") if self.config.delegate else None

    def devices(self) -> list[DeviceInfo]:
        devs = [DeviceInfo(CPU_DEVICE, CPU_DEVICE, detail="LiteRT CPU (XNNPACK)")]
        delegate_id = self._delegate_id()
        if self.config.delegate is not None and delegate_id is not None:
            found = self.config.delegate.is_file()
            detail = str(self.config.delegate) if found else f"{self.config.delegate}: no such file"
            devs.insert(0, DeviceInfo(delegate_id, delegate_id, healthy=found, detail=detail))
        return devs

    def _delegates(self, device: str | None) -> tuple[str, list[Any]]:
        path, delegate_id = self.config.delegate, self._delegate_id()
        if device == CPU_DEVICE or path is None or delegate_id is None:
            if device not in (None, CPU_DEVICE):
                known = ", ".join(d.id for d in self.devices())
                raise DriverError(f"litert: unknown device {device!r} (known: {known})")
            return CPU_DEVICE, []
        if device not in (None, delegate_id):
            known = ", ".join(d.id for d in self.devices())
            raise DriverError(f"litert: unknown device {device!r} (known: {known})")
        _check_delegate_library(path)
        try:
            delegate = self._litert.load_delegate(str(path), dict(self.config.delegate_options))
        except (ValueError, OSError, RuntimeError) as exc:
            raise DriverError(f"litert: delegate {path}: {one_line(exc)}") from exc
        return delegate_id, [delegate]

    def load(self, model_file: Path, device: str | None = None) -> LoadedModel:
        if not model_file.is_file():
            raise DriverError(f"cannot load {model_file}: no such file")
        device_id, delegates = self._delegates(device)
        try:
            content = model_file.read_bytes()
        except OSError as exc:
            raise DriverError(f"cannot load {model_file}: {exc.strerror or exc}") from exc

        def make() -> _Interpreter:
            return _Interpreter(
                self._litert.Interpreter(
                    model_content=content,
                    num_threads=self.config.num_threads,
                    experimental_delegates=delegates or None,
                )
            )

        try:
            return LiteRTModel(make, self.config.interpreters_per_model, model_file, device_id)
        except (ValueError, RuntimeError) as exc:
            raise DriverError(f"cannot load {model_file}: {one_line(exc)}") from exc
