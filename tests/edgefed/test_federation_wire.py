"""The federation wire: parameter encoding, framing, chunking, reassembly and resume."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edgefed.errors import ProtocolError
from edgefed.federation_upload import (
    CHUNK_OVERHEAD_BYTES,
    UPDATE_OVERHEAD_BYTES,
    Reassembler,
    Upload,
    split,
)
from edgefed.federation_wire import (
    MAX_MISSING_LISTED,
    AdoptionReport,
    FederationTopics,
    GlobalModel,
    Received,
    ReceivedModel,
    RoundOpen,
    UpdateAck,
    UpdateChunk,
    UpdateQuery,
    decode,
    decode_params,
    encode,
    encode_params,
    max_encoded_bytes,
    sha256_hex,
)
from edgefed.wire import new_job_id


def _params() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(400, 10)).astype(np.float32), np.arange(10, dtype=np.float64)]


def _upload(data: bytes, chunk: int = 4096) -> Upload:
    return Upload.of(
        new_job_id(),
        data,
        model="digits",
        round=3,
        base_version=2,
        num_samples=120,
        metrics={"loss": 0.3},
        max_chunk_bytes=chunk,
    )


def test_params_round_trip_exactly() -> None:
    big_endian = np.array([[1, -2]], dtype=">i4")  # in; native out
    params = [*_params(), big_endian, np.zeros((0, 3), np.float32)]
    out = decode_params(encode_params(params))
    for a, b in zip(params, out, strict=True):
        assert a.shape == b.shape and a.dtype.name == b.dtype.name
        np.testing.assert_array_equal(a, b)


def _header(specs: list[dict[str, object]]) -> bytes:
    raw = json.dumps(specs).encode()
    return struct.pack(">I", len(raw)) + raw


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00", "shorter than"),
        (struct.pack(">I", 99) + b"[]", "does not fit"),
        (struct.pack(">I", 5) + b"nope!", "not JSON"),
        (struct.pack(">I", 2) + b"[]", "1 to 64"),
        (_header([{"dtype": "object", "shape": [1]}]), "dtype"),
        (_header([{"dtype": "float32", "shape": [9]}]) + b"\0" * 35, "past"),
        (_header([{"dtype": "float32", "shape": [-1]}]), "invalid shape"),
        (_header([{"dtype": "float32", "shape": [1], "x": 1}]), "exactly dtype and shape"),
        (_header([{"dtype": "float32", "shape": [65536] * 4}]), "spans more than"),  # 2**64
        (_header([{"dtype": "float32", "shape": [0, 2**26, 2**26, 2**26]}]), "spans more than"),
        (_header([{"dtype": "float32", "shape": [True, 1]}]), "invalid shape"),
        (struct.pack(">I", 4000) + b"[" * 4000, "nested too deep"),
        (struct.pack(">I", 3) + b"[\xff]", "not JSON"),
    ],
)
def test_malformed_params_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_params(data)


def test_object_and_stray_bytes_are_refused() -> None:
    with pytest.raises(ProtocolError, match="dtype"):
        encode_params([np.array([object()])])
    with pytest.raises(ProtocolError, match="stray"):
        decode_params(encode_params(_params()) + b"x")


def test_messages_round_trip_and_only_chunks_carry_bytes() -> None:
    opened = RoundOpen(model="digits", round=1, base_version=0, participants=["a"], deadline_ms=5)
    assert decode(encode(opened)) == opened
    query = UpdateQuery(update_id=new_job_id())
    assert decode(encode(query)) == query
    with pytest.raises(ProtocolError, match="no body"):
        encode(query, b"x")
    upload = _upload(b"abc" * 10)
    received = decode(upload.frames()[0])
    assert isinstance(received, Received) and received.body == b"abc" * 10


def test_global_model_carries_its_parameters_under_their_hash() -> None:
    body = encode_params(_params())
    header = GlobalModel(
        model="digits", version=2, round=2, sha256=sha256_hex(body), signature="0" * 128
    )
    received = decode(encode(header, body))
    assert isinstance(received, ReceivedModel) and received.body == body
    with pytest.raises(ProtocolError, match="sha256"):
        decode(encode(header, body[:-1] + b"\x01"))
    report = AdoptionReport(model="digits", version=2, adopted=False, reason="worse")
    assert decode(encode(report)) == report


def test_numbers_json_cannot_carry_are_refused_on_both_sides() -> None:
    """JSON has no NaN: a NaN training loss went out as null, which serverd refused, so an
    edge whose training diverged sent chunks serverd dropped without an answer; a NaN or
    infinite accuracy in an adoption report was kept and made serverd's status invalid
    JSON. The edge's upload now refuses such metrics, naming them, before anything is
    sent; a frame holding a NaN or Infinity literal (another client's JSON) is refused."""
    with pytest.raises(ProtocolError, match=r"metrics\.loss: Input should be a finite number"):
        Upload.of(
            new_job_id(),
            b"x" * 100,
            model="digits",
            round=3,
            base_version=2,
            num_samples=120,
            metrics={"loss": float("nan")},
            max_chunk_bytes=4096,
        )
    chunk = _upload(b"x" * 100).frames()[0]  # its loss is 0.3
    with pytest.raises(ProtocolError, match=r"metrics\.loss: Input should be a finite number"):
        decode(chunk.replace(b'"loss":0.3', b'"loss":NaN'))  # as long: the frame stays whole
    report = AdoptionReport(
        model="digits", version=2, adopted=True, holdout_accuracy=0.5, current_accuracy=123456.0
    )
    for old, new in ((b"0.5", b"NaN"), (b"123456.0", b"Infinity")):
        with pytest.raises(ProtocolError, match="accuracy: Input should be a finite number"):
            decode(encode(report).replace(old, new))
    with pytest.raises(ValueError, match="finite"):
        AdoptionReport(model="digits", version=2, adopted=True, holdout_accuracy=float("inf"))


def test_chunk_index_beyond_count_is_refused() -> None:
    upload = _upload(b"x" * 100)
    bad = upload.headers[0].model_copy(update={"index": 1})
    with pytest.raises(ProtocolError, match="index 1 >= count 1"):
        decode(encode(bad, b"x"))


@pytest.mark.parametrize(
    ("count", "total", "body", "reason"),
    [
        (10**15, 1, b"x", "make at most 1"),
        (3, 2048, b"x", "make at most 2"),
        (1, 2, b"xyz", "1 to 2 bytes"),
    ],
)
def test_a_chunk_count_no_chunking_gives_is_refused(
    count: int, total: int, body: bytes, reason: str
) -> None:
    header = _upload(b"x" * 100).headers[0]
    bad = header.model_copy(update={"count": count, "total_bytes": total})
    with pytest.raises(ProtocolError, match=reason):
        decode(encode(bad, body))
    with pytest.raises(ProtocolError, match="at least 1024"):
        split(b"x" * 100, 512)


def test_chunks_reassemble_in_any_order_with_redeliveries() -> None:
    data = encode_params(_params())
    upload = _upload(data)
    frames = upload.frames()
    assert len(frames) == len(data) // 4096 + 1
    assembler = Reassembler()
    order = list(reversed(frames)) + frames[:2]
    results = [assembler.add("edge-1", _chunk(f)) for f in order[:-2]]
    assert [r is not None for r in results].count(True) == 1
    whole = results[-1]
    assert whole is not None and whole.data == data and whole.header.num_samples == 120
    assert assembler.pending_bytes() == 0


def test_resume_after_a_disconnect_sends_only_what_is_missing() -> None:
    data = encode_params(_params())
    upload = _upload(data)
    assembler = Reassembler()
    frames = upload.frames()
    for f in frames[::2]:  # every other chunk was lost with the connection
        assert assembler.add("edge-1", _chunk(f)) is None
    ack = assembler.ack("edge-1", upload.update_id)
    assert ack.state == "partial" and ack.missing == list(range(1, len(frames), 2))
    resend = upload.on_ack(ack)
    assert len(resend) == len(frames) // 2
    outcomes = [assembler.add("edge-1", _chunk(f)) for f in resend]
    assert outcomes[-1] is not None and outcomes[-1].data == data
    unknown = assembler.ack("edge-1", upload.update_id)
    assert unknown.state == "unknown" and len(upload.on_ack(unknown)) == len(frames)
    upload.on_ack(UpdateAck(update_id=upload.update_id, state="rejected", reason="stale"))
    assert upload.done and upload.verdict is not None and upload.verdict.reason == "stale"


def test_corrupt_whole_and_contradicting_chunks_are_refused_and_dropped() -> None:
    upload = _upload(b"y" * 10_000)
    frames = upload.frames()
    assembler = Reassembler()
    for f in frames[:-1]:
        assembler.add("edge-1", _chunk(f))
    last = _chunk(frames[-1])
    with pytest.raises(ProtocolError, match="sha256"):
        assembler.add("edge-1", Received(last.chunk, b"z" * len(last.body)))
    assert assembler.pending_bytes() == 0
    assembler.add("edge-1", _chunk(frames[0]))
    liar = _chunk(frames[1]).chunk.model_copy(update={"num_samples": 10**6})
    with pytest.raises(ProtocolError, match="contradicts"):
        assembler.add("edge-1", Received(liar, b"y"))
    assert assembler.pending_bytes() == 0


def test_reassembly_charges_each_update_its_size_and_overhead() -> None:
    """An update is charged its whole size, a fixed overhead and one per chunk when its
    first chunk comes (so 3 KiB of first chunks cannot hold 21 KiB of updates); the total
    follows updates in and out; a device holds one update, an update is no larger than
    ``max_update_bytes``."""
    cost = 3000 + UPDATE_OVERHEAD_BYTES + 3 * CHUNK_OVERHEAD_BYTES
    assembler = Reassembler(max_pending_bytes=2 * cost + 100, max_update_bytes=3000)
    uploads = [_upload(b"q" * 3000, chunk=1024) for _ in range(3)]
    for device, upload in zip(("a", "b"), uploads, strict=False):
        assert assembler.add(device, _chunk(upload.frames()[0])) is None
    assert assembler.pending_bytes() == 2 * cost
    assert assembler.add("c", _chunk(uploads[2].frames()[0])) is None  # no room: c waits
    assert assembler.waits("c", uploads[2].update_id) and assembler.waiting() == 1
    assert assembler.pending_updates() == 2 and assembler.woken() == []
    for frame in uploads[0].frames()[1:]:
        assembler.add("a", _chunk(frame))
    assert assembler.pending_bytes() == cost and assembler.pending_updates() == 1
    again = UpdateAck(update_id=uploads[2].update_id, state="unknown")  # send it all
    assert assembler.woken() == [("c", again)]  # a's room given back
    assert assembler.waiting() == 0 and assembler.woken() == []
    assembler.add("b", _chunk(uploads[2].frames()[0]))  # b's newer update replaces its first
    assert not assembler.holds("b", uploads[1].update_id)
    assert assembler.holds("b", uploads[2].update_id) and assembler.pending_bytes() == cost
    with pytest.raises(ProtocolError, match="at most 3000"):
        assembler.add("c", _chunk(_upload(b"q" * 3001).frames()[0]))
    assembler.clear()
    assert assembler.pending_bytes() == 0 and assembler.pending_updates() == 0


def test_interleaved_updates_past_the_room_wait_and_are_asked_for_again() -> None:
    """Two devices upload at once, chunk by chunk, and there is room for one: the second's
    chunks are dropped and it waits (before, it was refused as malformed); once the first
    is whole it is woken to send its update again, and its last chunk, which came after
    the room did, asks for the chunks dropped before it: the update is whole once they
    are in."""
    a, b = _upload(b"a" * 5000, chunk=1024), _upload(b"b" * 5000, chunk=1024)
    cost = 5000 + UPDATE_OVERHEAD_BYTES + 5 * CHUNK_OVERHEAD_BYTES
    assembler = Reassembler(max_pending_bytes=cost * 3 // 2)
    for first, second in zip(a.frames()[:-1], b.frames()[:-1], strict=True):
        assert assembler.add("a", _chunk(first)) is None
        assert assembler.add("b", _chunk(second)) is None
    assert assembler.waits("b", b.update_id) and assembler.pending_updates() == 1
    whole = assembler.add("a", _chunk(a.frames()[-1]))
    assert whole is not None and whole.data == b"a" * 5000
    assert assembler.woken() == [("b", UpdateAck(update_id=b.update_id, state="unknown"))]
    assert assembler.add("b", _chunk(b.frames()[-1])) is None  # held: there is room
    ack = assembler.next_ack("b", b.update_id)
    assert ack is not None and (ack.state, ack.missing) == ("partial", [0, 1, 2, 3])
    outcomes = [assembler.add("b", _chunk(frame)) for frame in b.on_ack(ack)]
    assert outcomes[-1] is not None and outcomes[-1].data == b"b" * 5000


def test_with_the_chunking_set_no_chunk_is_larger() -> None:
    assembler = Reassembler(max_chunk_bytes=2048)
    upload = _upload(b"z" * 5000, chunk=4096)
    with pytest.raises(
        ProtocolError, match="2 chunks for 5000 bytes; chunks of at most 2048 need 3"
    ):
        assembler.add("a", _chunk(upload.frames()[0]))
    upload = _upload(b"z" * 5000, chunk=2048)
    big = Received(upload.headers[1], upload.chunks[1] + b"z")
    with pytest.raises(ProtocolError, match="chunk 1 holds 2049 bytes, more than 2048"):
        assembler.add("a", big)
    assert assembler.pending_bytes() == 0
    upload = _upload(b"z" * 5000, chunk=1024)  # smaller chunks are fine
    outcomes = [assembler.add("a", _chunk(f)) for f in upload.frames()]
    assert outcomes[-1] is not None and outcomes[-1].data == b"z" * 5000


def test_an_ack_lists_a_bounded_number_and_then_the_next() -> None:
    upload = _upload(b"w" * (1024 * (MAX_MISSING_LISTED + 10)), chunk=1024)
    assembler = Reassembler()
    assembler.add("a", _chunk(upload.frames([0])[0]))
    assert assembler.next_ack("a", upload.update_id) is None  # nothing asked yet
    ack = assembler.ack("a", upload.update_id)
    assert ack.missing == list(range(1, MAX_MISSING_LISTED + 1))
    for frame in upload.on_ack(ack)[:-1]:
        assembler.add("a", _chunk(frame))
        assert assembler.next_ack("a", upload.update_id) is None  # not all in yet
    assembler.add("a", _chunk(upload.on_ack(ack)[-1]))
    following = assembler.next_ack("a", upload.update_id)
    assert following is not None
    assert following.missing == list(range(MAX_MISSING_LISTED + 1, MAX_MISSING_LISTED + 10))


def test_the_bound_of_an_update_of_given_shapes_is_its_float64_encoding() -> None:
    shapes = [(400, 10), (10,)]
    wide = [np.zeros(shape, np.float64) for shape in shapes]
    assert max_encoded_bytes(shapes) == len(encode_params(wide))
    assert len(encode_params(_params())) < max_encoded_bytes(shapes)


def test_topics() -> None:
    topics = FederationTopics("site/user/edgefed")
    assert topics.update("ns/cam-1") == "site/user/edgefed/federation/update/ns/cam-1"
    assert topics.device_of("update", topics.update("ns/cam-1")) == "ns/cam-1"
    assert topics.device_of("ack", topics.update("cam")) is None
    assert topics.filter("round") == "site/user/edgefed/federation/round/#"
    with pytest.raises(ProtocolError):
        topics.update("../x")


def _chunk(data: bytes) -> Received:
    message = decode(data)
    assert isinstance(message, Received) and isinstance(message.chunk, UpdateChunk)
    return message


def test_the_first_verdict_on_an_upload_stands() -> None:
    """serverd answers a last chunk delivered twice (QoS 1) with "already answered":
    that late ack turned an accepted update into a rejected one on the edge."""
    upload = _upload(b"x" * 10_000)
    assert upload.on_ack(UpdateAck(update_id=upload.update_id, state="accepted")) == []
    late = UpdateAck(update_id=upload.update_id, state="rejected", reason="already answered")
    assert upload.on_ack(late) == []
    assert upload.on_ack(UpdateAck(update_id=upload.update_id, state="unknown")) == []
    assert upload.done and upload.verdict is not None and upload.verdict.state == "accepted"
