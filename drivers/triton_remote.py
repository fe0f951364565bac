"""Triton-remote driver: a model served by a Triton Inference Server, used as a local device.

The edge sends the input tensors over tritonclient's gRPC API and gets the output tensors
back, so a model image whose model is served by serverd's Triton (or any Triton) runs
through the same ``ModelRunner`` pre-processing and decoder as a local one. The driver
has one device, ``remote``, healthy while the server answers ready. ``load`` maps the
image (the directory of the model file) to a Triton model name (``models``, default the
image's directory name), checks that the model is ready there and takes its tensors from
the model's metadata. Every call has ``timeout_s``; an unreachable server, a model not
loaded there or a timeout is one ``DriverError`` line, so fallback chains and the
status API treat a remote device like any other.
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

DEVICE = "remote"


class TritonRemoteConfig(DriverConfig):
    type: Literal["triton-remote"] = Field(description="Driver type")
    url: str = Field(
        pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d+$", description="Triton's gRPC endpoint, host:port"
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description="Triton model name per model image (directory name); unlisted images use "
        "their directory name",
    )
    model_version: str = Field("", description="Model version to use ('' lets Triton choose)")
    timeout_s: float = Field(5.0, gt=0, le=600, description="Deadline of one call to Triton")
    tls: bool = Field(False, description="Use TLS on the gRPC channel")
    root_certificates: Path | None = Field(
        None, description="CA bundle that signs the server's certificate (with tls)"
    )


class TritonRemoteModel(LoadedModel):
    """One model on the remote server; the gRPC client is thread-safe."""

    def __init__(self, driver: TritonRemoteDriver, name: str, metadata: dict[str, Any]) -> None:
        self._driver = driver
        self._name = name
        self.device = DEVICE
        self.inputs = [driver.spec(t) for t in metadata.get("inputs", [])]
        self.outputs = [driver.spec(t) for t in metadata.get("outputs", [])]
        self._closed = False

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise DriverError(f"{self._name}: model is closed")
        return self._driver.infer(self._name, feeds, [o.name for o in self.outputs])

    def close(self) -> None:
        self._closed = True


class TritonRemoteDriver(Driver[TritonRemoteConfig]):
    type: ClassVar[str] = "triton-remote"
    config_model = TritonRemoteConfig
    file_suffixes: ClassVar[tuple[str, ...]] = (".onnx", ".tflite")

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self._grpc = import_sdk(self.type, "tritonclient.grpc")
        self._utils = import_sdk(self.type, "tritonclient.utils")
        root = self.config.root_certificates
        try:
            self._client = self._grpc.InferenceServerClient(
                self.config.url,
                ssl=self.config.tls,
                root_certificates=str(root) if root else None,
            )
        except Exception as exc:  # a malformed URL or unreadable certificate
            raise DriverError(f"triton-remote {self.config.url}: {self._message(exc)}") from exc

    def _message(self, exc: Exception) -> str:
        """One line for a tritonclient error; a missed deadline always reads the same (gRPC
        reports it as "Deadline Exceeded" or as "Stream removed", depending on the moment)."""
        status = getattr(exc, "status", None)
        if str(status() if callable(status) else "").endswith("DEADLINE_EXCEEDED"):
            return f"Deadline Exceeded (no answer within {self.config.timeout_s:g} s)"
        message = getattr(exc, "message", None)
        text = message() if callable(message) else None
        return " ".join(str(text).split()) if text else one_line(exc)

    def _where(self) -> str:
        return f"triton-remote {self.config.url}"

    def spec(self, tensor: dict[str, Any]) -> TensorSpec:
        """A tensor of Triton's model metadata (JSON form) as a TensorSpec."""
        dtype = np.dtype(self._utils.triton_to_np_dtype(tensor["datatype"])).name
        return TensorSpec(tensor["name"], tuple(int(d) for d in tensor["shape"]), dtype)

    def devices(self) -> list[DeviceInfo]:
        try:
            ready = bool(self._client.is_server_ready(client_timeout=self.config.timeout_s))
            detail = self.config.url if ready else f"{self.config.url}: server not ready"
        except Exception as exc:  # tritonclient raises InferenceServerException
            ready, detail = False, f"{self.config.url}: {self._message(exc)}"
        return [DeviceInfo(DEVICE, "triton", ready, detail)]

    def load(self, model_file: Path, device: str | None = None) -> LoadedModel:
        if device not in (None, DEVICE):
            raise DriverError(f"{self._where()}: unknown device {device!r} (known: {DEVICE})")
        image = model_file.parent.name
        name = self.config.models.get(image, image)
        version = self.config.model_version
        timeout = self.config.timeout_s
        try:
            if not self._client.is_model_ready(name, version, client_timeout=timeout):
                raise DriverError(f"{self._where()}: model {name!r} is not ready there")
            metadata = self._client.get_model_metadata(
                name, version, as_json=True, client_timeout=timeout
            )
        except DriverError:
            raise
        except Exception as exc:
            raise DriverError(
                f"{self._where()}: cannot load {name!r}: {self._message(exc)}"
            ) from exc
        return TritonRemoteModel(self, name, metadata)

    def infer(
        self, name: str, feeds: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        """One inference of model ``name``; DriverError naming the server on any failure."""
        try:
            inputs = []
            for key, value in feeds.items():
                array = np.ascontiguousarray(value)
                tensor = self._grpc.InferInput(
                    key, list(array.shape), self._utils.np_to_triton_dtype(array.dtype)
                )
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            result = self._client.infer(
                name,
                inputs,
                model_version=self.config.model_version,
                outputs=[self._grpc.InferRequestedOutput(o) for o in outputs],
                client_timeout=self.config.timeout_s,
            )
        except Exception as exc:  # InferenceServerException, or a dtype Triton has no name for
            raise DriverError(f"{self._where()}: {name}: run failed: {self._message(exc)}") from exc
        out = {}
        for key in outputs:
            value = result.as_numpy(key)
            if value is None:
                raise DriverError(f"{self._where()}: {name}: no output {key!r} in the reply")
            out[key] = value
        return out

    def close(self) -> None:
        self._client.close()
