"""Response and query models of the HTTP API; the OpenAPI document is generated from them.

Responses are built by validating the daemon's internal dicts through these models, so
what the API sends is exactly what the OpenAPI document says. ``_Out`` models keep the
fields they name and ignore other keys of the source dicts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgefed.lifecycle import Status as JobStatus

Floats = list[float]


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ErrorBody(_Out):
    error: str = Field(description="Short machine-readable error kind")
    reason: str = Field(description="What was wrong, for a person")


class Health(_Out):
    status: Literal["ok"] = Field(
        description="'ok': the process serves HTTP and no pipeline thread is stuck"
    )


class Check(_Out):
    name: str = Field(description="capture:<camera>, models or link:<name>")
    ok: bool = Field(description="Whether this part is ready")
    detail: str = Field(
        description="State or reason; a camera that is not running adds its last error"
    )


class Readiness(_Out):
    ready: bool = Field(description="All checks pass (HTTP 200), else HTTP 503")
    checks: list[Check] = Field(description="One entry per camera, the models and each link")


class ObjectOut(_Out):
    track_id: int = Field(description="The object's id on this camera")
    box: Floats = Field(
        description="x1, y1, x2, y2 (frame pixels) at the frame's time (the status: now): "
        "the detection's, or the tracker's prediction between detections"
    )
    score: float = Field(description="Latest detection score")
    duration_s: float = Field(description="Seconds from the first to the latest detection")
    since_detected_s: float = Field(
        description="Seconds since its latest detection (between detections its box is the "
        "tracker's prediction)"
    )
    confirmed: bool = Field(description="Detected often enough to be reported as an object")


class TrackOut(ObjectOut):
    trail: list[Floats] = Field(description="Recent foot points (x, y), oldest first")


class CameraStatus(_Out):
    name: str = Field(description="Camera name")
    state: str = Field(description="connecting, running, reconnecting, ended, failed, stopped")
    capture_fps: float = Field(description="Frames/s delivered by the capture")
    processed_fps: float = Field(description="Frames/s that completed every model")
    frames: int = Field(description="Frames captured")
    ring_drops: int = Field(description="Frames dropped by the ring (newest wins)")
    reconnects: int = Field(description="Times frames flowed again after a loss")
    last_error: str | None = Field(description="Last capture error")
    gated: int = Field(description="Frames with motion, sent to the models")
    skipped_static: int = Field(
        description="Frames the gate decided had no motion, skipped (the up to "
        "motion.pre_roll frames it has not decided yet are neither this nor gated)",
    )
    skipped_rate: int = Field(description="Frames skipped by pipeline.target_fps")
    skipped_failed: int = Field(0, description="Frames whose dispatch failed (see the log)")
    gate_pass_ratio: float | None = Field(description="gated / (gated + skipped_static)")
    motion_ratio: float = Field(description="Changed share of the last gated frame, 0..1")
    objects: list[TrackOut] = Field(
        default_factory=list, description="Tracked people in view (models with regions: planned)"
    )


class ModelStatus(_Out):
    name: str = Field(description="Model name")
    loaded: bool = Field(description="The model image loaded on its driver")
    enabled: bool = Field(False, description="The model runs (runtime setting)")
    error: str | None = Field(None, description="Why the model did not load")
    driver: str | None = Field(None, description="Driver type")
    device: str | None = Field(None, description="Device id on the driver")
    inferences: int = Field(0, description="Successful runs")
    errors: int = Field(0, description="Failed runs")
    dropped: int = Field(0, description="Frames dropped from a full queue")
    runner_swaps: int = Field(
        0, description="Times a new model version was swapped in while running (federation)"
    )
    queue_depth: int = Field(0, description="Frames waiting")
    p50_ms: float | None = Field(None, description="Median run time over the last runs (ms)")
    p99_ms: float | None = Field(None, description="99th percentile run time (ms)")
    mean_ms: float | None = Field(None, description="Mean run time (ms)")
    latency_buckets: list[tuple[float, int]] = Field(
        default_factory=list,
        description="Lifetime histogram of run times: [upper bound ms, runs at or under it]",
    )
    latency_sum_ms: float = Field(0.0, description="Sum of every run time (ms)")
    latency_count: int = Field(0, description="Runs in the histogram (read with its buckets)")
    runtime: dict[str, Any] | None = Field(
        None,
        description="What runs the model, when more than an in-process driver: a fallback "
        "chain (serving device, why, moves) and a side-car (state, pid, restarts, failures)",
    )


class ModelInfo(ModelStatus):
    image: str | None = Field(None, description="Model image name")
    version: str | None = Field(None, description="Model image version")
    task: str | None = Field(None, description="Task of the image (detection, landmarks, ...)")
    input: str | None = Field(None, description="Input size WxH")
    decoder: str | None = Field(None, description="Output decoder")
    cascade_on: str | None = Field(None, description="Parent model of a cascade")
    regions: str = Field(description="motion, full, motion+full or planned")
    every_n: int = Field(description="Runs on every n-th gated frame")


class OutboxSummary(_Out):
    available: bool = Field(description="An outbox is configured")
    depth: int = Field(description="Open (not yet closed) jobs")
    counts: dict[str, int] = Field(description="Jobs per status")
    clock_offset_ms: int = Field(
        0, description="serverd's clock minus this device's, as serverd's replies tell"
    )


class OffloadResultOut(_Out):
    """An offloaded job that closed, next to the local result it was offloaded from."""

    type: Literal["offload_result"] = Field(description="Record type")
    job_id: str = Field(description="Offload job id")
    camera: str | None = Field(description="Camera of the frame sent")
    frame: int | None = Field(description="Frame index of the camera")
    model: str = Field(description="Model the server was asked to run")
    status: str = Field(description="Exit (answered), Failed or Expired")
    served_by: str | None = Field(description="Server instance that answered (Exit only)")
    result: list[dict[str, Any]] | None = Field(description="The server's results (Exit only)")
    local_result: Any = Field(None, description="The local model's result, if it had one")


class OffloadResultsSummary(_Out):
    available: bool = Field(description="Offloading is configured")
    counts: dict[str, int] = Field(description="Closed offload jobs by status since start")
    sink_errors: int = Field(0, description="Records a sink (results file, EventBus) failed on")
    recent: list[OffloadResultOut] = Field(description="The last closed jobs, newest first")


class FederatedModelStatus(_Out):
    model: str = Field(description="Federated model")
    version: int | None = Field(description="Global version served (null: none yet)")
    image: str | None = Field(None, description="Its installed image (<images_dir>/<model>)")
    rolled_back_from: int | None = Field(
        None, description="Version the operator rolled back from: up to it, versions are refused"
    )
    samples: int = Field(description="Samples it could train on (held-back slice excluded)")
    rounds_trained: int = Field(description="Rounds this device trained in")
    updates_accepted: int = Field(description="Updates serverd accepted")
    updates_rejected: int = Field(description="Updates serverd rejected")
    versions_adopted: int = Field(description="Global versions adopted")
    versions_refused: int = Field(description="Global versions refused")
    rounds_repeated: int = Field(0, description="Copies of a round trained already (reconnects)")
    versions_repeated: int = Field(0, description="Copies of a version refused already")
    superseded: int = Field(
        0, description="Rounds, versions or acks a later one replaced before the worker took them"
    )
    last_reason: str = Field(
        description="Why the last update or version was refused, or the last round failed"
    )
    last_update_rejection: str = Field("", description="Why serverd last rejected an update")
    last_version_refusal: str = Field("", description="Why this device last refused a version")


class FederationStatus(_Out):
    enabled: bool = Field(description="This device takes part in federated learning")
    training_allowed: bool | None = Field(
        None, description="The federated_training twin property (null: federation off)"
    )
    offers_sent: int = Field(0, description="Sample offers sent to serverd")
    samples: dict[str, int] = Field(
        default_factory=dict,
        description="Sample store counters: added, refused, dropped_oldest, write_failures "
        "(good samples the store failed to write: a full disk), read_failures (a damaged "
        "store: the models' samples then show 0)",
    )
    models: dict[str, FederatedModelStatus] = Field(
        default_factory=dict, description="Per federated model"
    )
    hard_examples: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Per offloaded model whose answers label samples: remembered, forgotten, "
        "stored, no_result, low_score, unknown_class, refused, store_failures (the store "
        "failed to write: a full disk)",
    )


class SampleIn(BaseModel):
    """An operator's labelled sample: the model's feature vector and its class."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    features: list[float] = Field(
        min_length=1, max_length=65536, description="Feature vector the model's head reads"
    )
    label: str | Annotated[int, Field(ge=0)] = Field(description="Class name or index")


class SampleStored(_Out):
    id: int = Field(description="Id of the stored sample")
    model: str = Field(description="Model it was stored for")
    samples: int = Field(description="Samples of the model to train on now")


class LinkStatus(_Out):
    name: str = Field(description="Link name (e.g. mqtt)")
    connected: bool = Field(description="The connection is up")
    cert_expires: float | None = Field(
        None,
        description="When the link's client certificate runs out (epoch seconds); edged "
        "warns in its log from 30 days before. None without a client certificate",
    )


class PreviewStatus(_Out):
    viewers: int = Field(description="Open MJPEG streams")
    renders: int = Field(description="Preview frames rendered since start")
    frames: int = Field(description="Completed frames seen by the preview sink")


class StatusBody(_Out):
    device_id: str = Field(description="Device id")
    versions: dict[str, str] = Field(description="edged, Python and key package versions")
    uptime_s: float = Field(description="Seconds since the pipeline was built")
    frames_completed: int = Field(description="Frames that completed every model")
    pipeline_fps: float = Field(description="Completed frames/s")
    target_fps: float | None = Field(description="Per-camera rate cap (null: none)")
    cameras: list[CameraStatus] = Field(description="Per camera")
    models: list[ModelStatus] = Field(description="Per configured model")
    outbox: OutboxSummary = Field(description="Offload outbox depth by status")
    offload_results: OffloadResultsSummary = Field(
        description="Server results of offloaded jobs, as they closed"
    )
    links: list[LinkStatus] = Field(description="Broker links")
    preview: PreviewStatus = Field(description="Live preview")
    events_last_seq: int = Field(description="Sequence number of the newest event")
    object_events: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Newest object events (new/update/end, without snapshots), oldest first",
    )
    object_event_counts: dict[str, int] = Field(
        default_factory=dict, description="Object events since start, by type (new/update/end)"
    )
    federation: FederationStatus = Field(
        default_factory=lambda: FederationStatus(enabled=False),
        description="Federated learning on this device",
    )
    twin: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="The device twin's ways in, as configured: mqtt (EdgeCore's twin topics, "
        "KubeEdge <= 1.14), dmi (the DMI mapper, 1.15+); each with what it reported (mqtt) or "
        "whether it is registered (dmi), the properties it refused and why (rejections), "
        "last_error and counters",
    )


class MotionInfo(_Out):
    ratio: float = Field(description="Changed share of the frame")
    boxes: list[Floats] = Field(description="Motion boxes x1, y1, x2, y2 (frame pixels)")


class DetectionOut(_Out):
    type: Literal["detection"]
    label: str
    score: float
    box: Floats = Field(description="x1, y1, x2, y2 (frame pixels)")
    keypoints: list[Floats] = Field(default_factory=list, description="x, y per keypoint")


class LandmarksOut(_Out):
    type: Literal["landmarks"]
    box: Floats = Field(description="The crop the landmarks were found in")
    presence: float
    points: list[Floats] = Field(description="x, y, z, visibility per landmark (frame pixels)")


class ClassificationOut(_Out):
    type: Literal["classification"]
    top: list[tuple[str, float]] = Field(description="(label, score), best first")
    box: Floats | None = Field(description="Region classified (null: whole frame)")


class TextOut(_Out):
    type: Literal["text"]
    box: Floats
    score: float
    polygon: list[Floats]


ResultOut = Annotated[
    DetectionOut | LandmarksOut | ClassificationOut | TextOut, Field(discriminator="type")
]


class Event(_Out):
    seq: int = Field(description="Increasing sequence number")
    camera: str
    frame: int = Field(description="Frame index in its camera")
    time: float = Field(description="Capture time (Unix seconds)")
    motion: MotionInfo
    models: dict[str, list[ResultOut]] = Field(description="Results per model")
    latency_ms: dict[str, float] = Field(description="Run time per model (ms)")
    errors: dict[str, str] = Field(description="Error per failed model")
    dropped: list[str] = Field(description="Models that dropped this frame")
    objects: list[ObjectOut] = Field(
        description="The tracker's objects after this frame (cameras with a planned model)"
    )


class EventPage(_Out):
    events: list[Event] = Field(description="Events with seq > after, oldest first")
    last_seq: int = Field(description="Newest sequence number")
    next_after: int = Field(description="Pass as 'after' for the next page")


class OutboxJob(_Out):
    id: str
    device: str
    model: str
    requester: str
    payload_kind: str
    payload_bytes: int
    priority: int
    deadline: int = Field(description="Unix ms")
    created: int = Field(description="Unix ms")
    status: JobStatus
    started: int | None
    ended: int | None
    updated: int
    iteration: int = Field(description="Attempts so far")
    next_attempt: int
    last_error: str | None
    reason: str = Field(description="Why the job was offloaded")
    result: dict[str, Any] | None = Field(description="The server's result, once received")


class OutboxPage(_Out):
    available: bool = Field(description="An outbox is configured")
    counts: dict[str, int] = Field(description="Jobs per status")
    jobs: list[OutboxJob] = Field(description="Newest first")
    limit: int
    offset: int


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EventsQuery(_Query):
    after: int = Field(0, ge=0, le=2**53, description="Return events with seq > after")
    limit: int = Field(50, ge=1, le=500, description="Most events returned")


class OutboxQuery(_Query):
    status: JobStatus | None = Field(None, description="Only jobs in this status")
    limit: int = Field(50, ge=1, le=500, description="Most jobs returned")
    offset: int = Field(0, ge=0, le=1_000_000_000, description="Jobs skipped (newest first)")


class PreviewQuery(_Query):
    camera: str | None = Field(None, description="Camera name (default: the first camera)")
    mask: bool = Field(False, description="Tint the gate's motion mask in red")
