"""The terminal commands' tables and durations."""

from __future__ import annotations

from edgefed.terminal import duration, table


def test_table_aligns_columns_and_shows_missing_values() -> None:
    assert table(["A", "BB"], [["x", None], ["long", 1.5], ["y", True]]) == [
        "A     BB",
        "x     -",
        "long  1.5",
        "y     yes",
    ]


def test_durations_read_as_minutes_and_hours() -> None:
    assert (duration(7.9), duration(247), duration(7389)) == ("0m07s", "4m07s", "2h03m09s")
