"""bench perception's clip and oracle geometry: held out from the gating bench, full cover."""

from __future__ import annotations

import itertools

from bench.gating import parse_args as gating_args
from bench.perception import gating_starts, segments_for, tiles


def test_the_perception_clip_shares_no_frame_with_the_gating_bench() -> None:
    args = gating_args([])
    gating = {
        s + i for s in gating_starts(795, args.segments, args.motion_frames)
        for i in range(args.motion_frames)
    }  # fmt: skip
    for count in (4, 8, 15):
        held_out = {s + i for s, n in segments_for("perception", 795, count) for i in range(n)}
        assert held_out and not held_out & gating
        assert max(held_out) < 795
    tuning = {s + i for s, n in segments_for("gating", 795, 16) for i in range(n)}
    assert tuning == gating


def test_oracle_tiles_cover_the_frame_with_half_overlap() -> None:
    for side in (224.0, 224 / 1.5):
        grid = tiles(768, 576, side)
        for y in range(0, 576, 8):
            for x in range(0, 768, 8):
                assert any(t[0] <= x <= t[2] and t[1] <= y <= t[3] for t in grid)
        xs = sorted({t[0] for t in grid})
        assert all(b - a <= side / 2 + 1e-6 for a, b in itertools.pairwise(xs))
