"""ONNX Runtime driver: runs ``.onnx`` model files on ORT execution providers.

The CPU provider is always there; a vendor NPU ships an ORT execution provider
(OpenVINO, QNN, VitisAI, a custom build, ...) that is named in ``providers`` and
configured through ``provider_options``. Each provider is one device; nodes the NPU
provider cannot run fall back to the CPU provider inside the same session.
"""

from __future__ import annotations

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
from edgefed.images.mixed_precision import ORT_EXACT_INT8, host_int8_saturates

CPU_PROVIDER = "CPUExecutionProvider"

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


class OnnxRuntimeConfig(DriverConfig):
    type: Literal["onnxruntime"] = Field(description="Driver type")
    providers: list[str] = Field(
        default_factory=lambda: [CPU_PROVIDER],
        min_length=1,
        description="Execution providers to offer as devices, in order of preference; an NPU "
        "vendor's provider (e.g. OpenVINOExecutionProvider, QNNExecutionProvider) goes first",
    )
    provider_options: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Options per provider name, passed to ONNX Runtime as given",
    )
    intra_op_threads: int = Field(
        1, ge=0, description="Threads inside one operator (0 lets ONNX Runtime decide)"
    )
    inter_op_threads: int = Field(
        1, ge=0, description="Threads across independent operators (0 lets ONNX Runtime decide)"
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimisation level"
    )
    exact_int8: bool | Literal["auto"] = Field(
        "auto",
        description="Run INT8 models through ONNX Runtime's exact U8U8 kernels instead of "
        "the fast U8S8 ones (session.x64quantprecision): on x86 CPUs without VNNI (AVX2, "
        "AVX-512 without VNNI) the fast kernels' 16-bit intermediate saturates and moves "
        "INT8 results away from fp32; with VNNI they are exact and faster. auto: exact "
        "only on a CPU whose fast kernels saturate",
    )


def short_name(provider: str) -> str:
    """Device id of a provider: ``CPUExecutionProvider`` -> ``cpu``."""
    return provider.removesuffix("ExecutionProvider").lower()


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_DTYPES.get(arg.type, arg.type))


class OnnxRuntimeModel(LoadedModel):
    """One ORT session; ``InferenceSession.run`` is thread-safe, so no lock is needed."""

    def __init__(self, session: Any, path: Path, device: str) -> None:
        self._session: Any | None = session
        self._path = path
        self.device = device
        self.inputs = [_spec(a) for a in session.get_inputs()]
        self.outputs = [_spec(a) for a in session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise DriverError(f"{self._path.name}: model is closed")
        try:
            values = session.run(self._output_names, feeds)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise DriverError(f"{self._path.name}: run failed: {one_line(exc)}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        """Drop the session; ORT frees it once runs in flight have returned."""
        self._session = None


class OnnxRuntimeDriver(Driver[OnnxRuntimeConfig]):
    type: ClassVar[str] = "onnxruntime"
    config_model = OnnxRuntimeConfig
    file_suffixes: ClassVar[tuple[str, ...]] = (".onnx",)

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self._ort = import_sdk(self.type, "onnxruntime")
        wanted = self.config.exact_int8
        # whether INT8 runs through the exact kernels (status: the device's detail)
        self.exact_int8 = host_int8_saturates() if wanted == "auto" else wanted

    def devices(self) -> list[DeviceInfo]:
        available = set(self._ort.get_available_providers())
        return [
            DeviceInfo(
                id=short_name(p),
                model=short_name(p),
                healthy=p in available,
                detail=(
                    f"{p}, INT8 {'exact' if self.exact_int8 else 'fast'} kernels"
                    if p in available
                    else f"{p} is not in this onnxruntime build"
                ),
            )
            for p in self.config.providers
        ]

    def _provider(self, device: str | None) -> str:
        devs = self.devices()
        if device is None:
            healthy = [d for d in devs if d.healthy]
            if not healthy:
                raise DriverError("onnxruntime: none of the configured providers is available")
            return self.config.providers[devs.index(healthy[0])]
        for provider, dev in zip(self.config.providers, devs, strict=True):
            if device in (dev.id, provider):
                if not dev.healthy:
                    raise DriverError(f"onnxruntime: device {device!r}: {dev.detail}")
                return provider
        known = ", ".join(d.id for d in devs)
        raise DriverError(f"onnxruntime: unknown device {device!r} (configured: {known})")

    def _session_options(self) -> Any:
        opts = self._ort.SessionOptions()
        opts.intra_op_num_threads = self.config.intra_op_threads
        opts.inter_op_num_threads = self.config.inter_op_threads
        levels = self._ort.GraphOptimizationLevel
        opts.graph_optimization_level = {
            "disable": levels.ORT_DISABLE_ALL,
            "basic": levels.ORT_ENABLE_BASIC,
            "extended": levels.ORT_ENABLE_EXTENDED,
            "all": levels.ORT_ENABLE_ALL,
        }[self.config.graph_optimization]
        opts.log_severity_level = 3  # errors only: ORT's warnings go to stderr, not our log
        if self.exact_int8:
            opts.add_session_config_entry(ORT_EXACT_INT8, "1")
        return opts

    def load(self, model_file: Path, device: str | None = None) -> LoadedModel:
        provider = self._provider(device)
        if not model_file.is_file():
            raise DriverError(f"cannot load {model_file}: no such file")
        providers = [provider] if provider == CPU_PROVIDER else [provider, CPU_PROVIDER]
        options = [self.config.provider_options.get(p, {}) for p in providers]
        try:
            session = self._ort.InferenceSession(
                str(model_file),
                sess_options=self._session_options(),
                providers=providers,
                provider_options=options,
            )
        except Exception as exc:  # ORT raises its own pybind exception types
            raise DriverError(f"cannot load {model_file}: {one_line(exc)}") from exc
        if provider not in session.get_providers():
            raise DriverError(f"cannot load {model_file}: {provider} did not initialise")
        return OnnxRuntimeModel(session, model_file, short_name(provider))
