"""Twin deltas with hostile values (hypothesis, a real mosquitto, a running TwinService):
every value is applied only if valid, the settings stay within their bounds, and the
service never fails on a message."""

from __future__ import annotations

import json
import math
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.settings import MAX_FPS, MAX_MODELS, MAX_PIXELS, MIN_FPS, RuntimeSettings
from edgefed.testing.edgecore import wait_until
from tests.edged.twin.daemon import Daemon, Running

CASES = 300  # CI-sized
NAMES = [*RuntimeSettings.model_fields, "fps", "colour", "", "x" * 200]
hostile_values = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "1e-300",
            "3.2e306",
            "1e999",
            "nan",
            "-0",
            "9" * 400,
            "9" * 5000,
            "0x10",
            "  7",
            ",".join(["person"] * 3000),
            "person,person,pose",
            "DEBUG\n",
            "always",
        ]
    ),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats().map(repr),
)


def test_hostile_deltas_leave_valid_settings(setup: tuple[Running, Daemon]) -> None:
    running, _ = setup
    ec = running.edgecore
    sent = [0]

    @settings(
        max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(delta=st.dictionaries(st.sampled_from(NAMES), hostile_values, max_size=4))
    def publish(delta: dict[str, str]) -> None:
        message = {"event_id": uuid.uuid4().hex, "timestamp": 1, "twin": {}, "delta": delta}
        ec.publish("update/delta", json.dumps(message).encode())
        sent[0] += 1

    publish()
    counters = running.twin.counters
    wait_until(lambda: counters.deltas + counters.malformed >= sent[0], 30)
    assert running.client.counters.handler_errors == 0
    current = running.runtime.current()
    RuntimeSettings.model_validate(current.model_dump())  # still valid as a whole
    fps = current.target_fps
    assert fps is None or (math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS)
    assert 0 <= current.motion_min_pixels <= MAX_PIXELS
    assert len(current.enabled_models) == len(set(current.enabled_models)) <= MAX_MODELS
