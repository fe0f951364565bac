"""packaging/grafana/edgefed-fleet.json: a dashboard Grafana imports (unique ids, panels
on its 24-column grid without overlaps, every query on the dashboard's Prometheus
variable), reading only metrics the daemons export as documented. Its queries run on a
real Prometheus scraping a real edged in tests/edged/api/test_grafana.py."""

from __future__ import annotations

from tests.support.grafana import dashboard, panels, queries
from tests.support.metricdocs import documented_metrics, metrics_read


def test_the_dashboard_is_importable_and_its_panels_tile_the_grid() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_every_column_of_a_table_is_named() -> None:
    """Grafana names a table's merged values ``Value #<refId>``, whatever the legend."""
    tables = [p for p in panels() if p["type"] == "table"]
    assert tables
    for table in tables:
        (organize,) = [t["options"] for t in table["transformations"] if t["id"] == "organize"]
        named = set(organize["renameByName"]) | set(organize["excludeByName"])
        assert {f"Value #{t['refId']}" for t in table["targets"]} <= named, table["title"]


def test_the_dashboard_reads_only_metrics_the_daemons_export() -> None:
    used = {name for _, expr in queries() for name in metrics_read(expr)}
    assert {n.split("_")[0] for n in used} == {"edged", "serverd"}  # both daemons graphed
    assert used <= documented_metrics(), sorted(used - documented_metrics())
