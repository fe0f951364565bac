"""``python -m bench soak``'s reading of its samples: memory that settles against a leak."""

from __future__ import annotations

from bench.soak import PARTS, summarise


def samples(rss_at: list[float], every_s: float = 60.0) -> list[tuple[float, dict, float]]:
    out = []
    for n, rss in enumerate(rss_at):
        parts = {part: {"rss_mb": 0.0, "fds": 0.0, "threads": 0.0} for part in PARTS}
        parts["edged"] = {"rss_mb": rss, "fds": 20.0, "threads": 12.0}
        out.append((n * every_s, parts, 3.0 + n * 0.1))
    return out


def test_memory_that_rises_in_steps_then_stays_has_no_late_slope() -> None:
    settles = [340, 342, 348, 348, 349, 351, 353, 353, 353, 353, 353, 353, 353, 353]
    edged = summarise(samples(settles), warmup_s=120)["parts"]["edged"]
    assert edged["rss_growth_mb_per_hour"] > 20  # the whole window's slope overstates it
    assert abs(edged["rss_growth_mb_per_hour_last_half"]) < 1
    assert edged["rss_mb_after_warmup"] == 348 and edged["rss_mb_last"] == 353


def test_a_leak_keeps_its_slope_in_the_last_half() -> None:
    leaks = [340 + 0.5 * n for n in range(14)]  # 0.5 MB a minute: 30 MB an hour
    result = summarise(samples(leaks), warmup_s=120)
    edged = result["parts"]["edged"]
    assert abs(edged["rss_growth_mb_per_hour_last_half"] - 30) < 0.5
    assert set(result["parts"]) == {"edged"}  # parts that never ran are left out
    assert result["state_dir_growth_mb_per_hour"] == 6.0
