from __future__ import annotations

import json
import random
import struct

import cv2
import numpy as np
import pytest

from edgefed.errors import ProtocolError
from edgefed.wire import (
    PROTOCOL_VERSION,
    Availability,
    LocalSummary,
    OffloadAccepted,
    OffloadErrorMessage,
    OffloadRequest,
    OffloadResult,
    RequestMessage,
    Topics,
    check_jpeg_pixels,
    decode,
    decode_availability,
    decode_reply,
    decode_request,
    encode_message,
    encode_payload,
    encode_request,
    jpeg_size,
    new_job_id,
)

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"


def request(kind: str = "jpeg", **changes: object) -> OffloadRequest:
    fields: dict[str, object] = {
        "job_id": new_job_id(),
        "device_id": "factory/cam-1",
        "model": "pose-detector",
        "priority": 3,
        "deadline": 1_900_000_000_000,
        "created": 1_800_000_000_000,
        "payload_kind": kind,
        "metadata": {"camera": "gate", "frame": 17},
        "local": LocalSummary(box_scores=[0.4, 0.9]),
    }
    fields.update(changes)
    return OffloadRequest.model_validate(fields)


def result(job_id: str) -> OffloadResult:
    return OffloadResult(
        job_id=job_id,
        device_id="factory/cam-1",
        model="pose-detector",
        results=[{"label": "person", "score": 0.93, "box": [1, 2, 3, 4]}],
        timings_ms={"queue": 0.2, "infer": 4.1},
        served_by="serverd-1/triton-0",
        completed=1_800_000_000_050,
    )


def test_jpeg_request_round_trip_keeps_bytes_exactly() -> None:
    req = request()
    message = decode_request(encode_request(req, encode_payload("jpeg", JPEG)))
    assert message.request == req
    assert message.body == JPEG
    assert message.array is None


def test_tensor_request_round_trip_without_pickle() -> None:
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    message = decode_request(encode_request(request("tensor"), encode_payload("tensor", array)))
    assert message.array is not None
    assert message.array.dtype == np.float32
    np.testing.assert_array_equal(message.array, array)


def test_object_tensors_are_refused_at_both_ends() -> None:
    with pytest.raises(ProtocolError, match="Python objects"):
        encode_payload("tensor", np.array([{"a": 1}], dtype=object))
    header = request("tensor").model_dump_json().encode()
    # a hand-made .npy with an object dtype would need pickle to load
    npy = (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", 118)
        + (b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(117) + b"\n")
    )
    frame = struct.pack(">2sBI", b"EF", PROTOCOL_VERSION, len(header)) + header + npy + b"\x80"
    with pytest.raises(ProtocolError, match=r"\.npy"):
        decode(frame)


def test_replies_and_availability_round_trip() -> None:
    job = new_job_id()
    replies: list[OffloadAccepted | OffloadResult | OffloadErrorMessage] = [
        result(job),
        OffloadAccepted(job_id=job, device_id="cam-1", served_by="s1", queued=2),
        OffloadErrorMessage(
            job_id=job, device_id="cam-1", code="unknown_model", reason="no x", retryable=False
        ),
    ]
    for reply in replies:
        assert decode_reply(encode_message(reply)) == reply
    online = Availability(role="server", id="serverd-1", state="online", since=1, models=["a"])
    assert decode_availability(encode_message(online)) == online


def test_decoders_refuse_the_wrong_message_type() -> None:
    job = new_job_id()
    with pytest.raises(ProtocolError, match="expected a request"):
        decode_request(encode_message(result(job)))
    with pytest.raises(ProtocolError, match="expected a reply"):
        decode_reply(encode_request(request(), JPEG))


def test_unknown_version_is_refused_with_its_number() -> None:
    frame = bytearray(encode_message(result(new_job_id())))
    frame[2] = PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolError, match=f"unknown protocol version {PROTOCOL_VERSION + 1}"):
        decode(bytes(frame))


def test_oversized_message_is_refused_before_parsing() -> None:
    frame = encode_request(request(), JPEG)
    with pytest.raises(ProtocolError, match="limit 100"):
        decode(frame, max_bytes=100)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "shorter than the frame prefix"),
        (b"XX\x01\x00\x00\x00\x02{}", "not an EdgeFed frame"),
        (b"EF\x01\x00\x00\xff\xff{}", "does not fit"),
        (b"EF\x01\x00\x00\x00\x04\xff\xfe{}", "invalid header"),
        (b"EF\x01\x00\x00\x00\x02[]", "invalid header"),
        (b'EF\x01\x00\x00\x00\x0f{"type":"nope"}', "invalid header"),
    ],
)
def test_malformed_frames_give_one_line_reasons(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason) as info:
        decode(frame)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("priority", 999), ("deadline", 10**30), ("created", 2**63)],  # past what SQLite holds
)
def test_bad_fields_name_the_field(field: str, value: int) -> None:
    header = json.loads(request().model_dump_json())
    header[field] = value
    raw = json.dumps(header).encode()
    frame = struct.pack(">2sBI", b"EF", PROTOCOL_VERSION, len(raw)) + raw + JPEG
    with pytest.raises(ProtocolError, match=field):
        decode(frame)


def test_request_body_must_match_its_kind() -> None:
    with pytest.raises(ProtocolError, match="JPEG"):
        decode(encode_request(request(), b"not a jpeg at all"))
    with pytest.raises(ProtocolError, match="carries no body"):
        decode(encode_message(result(new_job_id())) + b"extra")


def test_metadata_is_bounded() -> None:
    with pytest.raises(ValueError, match="metadata"):
        request(metadata={"blob": "x" * 5000})


def test_random_garbage_never_escapes_as_anything_but_protocol_error() -> None:
    rng = random.Random(1234)
    good = encode_request(request(), JPEG)
    for _ in range(2000):
        choice = rng.random()
        if choice < 0.4:
            data = rng.randbytes(rng.randrange(0, 200))
        elif choice < 0.7:
            mutated = bytearray(good)
            for _ in range(rng.randrange(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            data = bytes(mutated)
        else:
            data = good[: rng.randrange(len(good))]
        try:
            message = decode(data)
        except ProtocolError as exc:
            assert "\n" not in str(exc)
        else:
            assert isinstance(message, RequestMessage)


def test_topics_put_the_device_last_so_namespaced_ids_work() -> None:
    topics = Topics("node-7/user/edgefed")
    topic = topics.request("factory/cam-1")
    assert topic == "node-7/user/edgefed/offload/request/factory/cam-1"
    match = Topics("+/user/edgefed").parse(topic)
    assert match is not None
    assert (match.prefix, match.kind, match.id) == (
        "node-7/user/edgefed",
        "request",
        "factory/cam-1",
    )
    assert Topics().parse("edgefed/offload/reply/cam-2") is not None
    assert Topics().parse("other/offload/request/cam-1") is None
    assert Topics().parse("edgefed/offload/request/a/b/c") is None
    assert Topics().requests_filter() == "edgefed/offload/request/#"


def test_topics_refuse_bad_prefixes_and_ids() -> None:
    for prefix in ("", "a//b", "a/#", "a/b+"):
        with pytest.raises(ProtocolError):
            Topics(prefix)
    with pytest.raises(ProtocolError, match="wildcard"):
        Topics("+/user/edgefed").reply("cam-1")
    with pytest.raises(ProtocolError, match="invalid id"):
        Topics().reply("cam/+")


def _with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG whose frame header claims ``width`` x ``height``."""
    i = next(i for i in range(2, len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] == 0xC0)
    return jpeg[: i + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[i + 9 :]


def test_jpeg_size_is_read_from_the_header_and_huge_images_refused() -> None:
    ok, encoded = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))
    assert ok
    jpeg = encoded.tobytes()
    assert jpeg_size(jpeg) == (64, 48)
    assert check_jpeg_pixels(jpeg) == (64, 48)
    assert check_jpeg_pixels(_with_size(jpeg, 7680, 4320)) == (7680, 4320)  # 8K passes
    with pytest.raises(ProtocolError, match="16000x16000 pixels"):
        check_jpeg_pixels(_with_size(jpeg, 16000, 16000))
    with pytest.raises(ProtocolError, match="no frame header"):
        check_jpeg_pixels(b"\xff\xd8\xff\xda\x00\x02")
    with pytest.raises(ProtocolError, match="SOI"):
        jpeg_size(b"GIF89a")
