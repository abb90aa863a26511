"""The group page (kpi_pipeline/dashboard/views/group.py): members aligned in time, group events."""

import json

import pandas as pd

from kpi_pipeline import store
from kpi_pipeline.store import groups as group_store
from kpi_pipeline_tests.dashboard import seed
from kpi_pipeline_tests.dashboard.helpers import metrics, texts

MEMBERS = ("orders", "sessions")


def _judged_group(url: str) -> pd.Timestamp:
    """The seed with ``orders`` and ``sessions`` judged as group ``traffic``, one event."""
    engine = seed.seed_database(url)
    start = seed.END - 10 * seed.HOUR
    group_store.reset_group(engine, "traffic", MEMBERS)
    members = json.dumps([{"kpi": "orders", "z": -4.0, "relative": -0.1, "at": start.isoformat()}])
    events = pd.DataFrame(
        [
            {
                "group_name": "traffic",
                "event_id": f"group:traffic@{start.isoformat()}",
                "start": start,
                "end": start + seed.HOUR,
                "points": 2,
                "peak_score": 0.7,
                "members": members,
            }
        ]
    )
    components = pd.DataFrame(
        {
            "kpi": ["orders", "sessions"],
            "ts": [start, start],
            "multivariate_score": [0.7, 0.0],
            "multivariate_z": [-4.0, 0.2],
        }
    )
    group_store.save_group_results(engine, "traffic", components=components, events=events, scored_until=seed.END)
    engine.dispose()
    return start


def test_group_page_shows_members_aligned_and_the_group_events(open_page, sqlite_url):
    start = _judged_group(sqlite_url)

    app = open_page(sqlite_url, "group", group="traffic")

    assert app.title[0].value == "KPI groups"
    tiles = metrics(app)
    assert (tiles["Members"], tiles["Group events (all time)"], tiles["Group events (30 days)"]) == ("2", "1", "1")
    chart = json.loads(app.get("plotly_chart")[0].proto.spec)
    titles = [a["text"] for a in chart["layout"]["annotations"]]
    assert titles == list(MEMBERS)
    shapes = chart["layout"]["shapes"]  # the event, shaded in every member's row
    assert len(shapes) == len(MEMBERS)
    assert {pd.Timestamp(shape["x0"]) for shape in shapes} == {start}
    moved = [t for t in chart["data"] if t["name"] == "moved in a group event"]
    assert [len(t["x"]) for t in moved] == [1, 0]  # orders moved, sessions did not
    [events] = app.dataframe
    assert events.value["Members that moved"].tolist() == ["orders -4.0 sd (-10.0%)"]


def test_group_page_without_groups_says_how_to_declare_them(open_page, sqlite_url):
    store.make_engine(sqlite_url).dispose()
    app = open_page(sqlite_url, "group")
    assert any("KPI_GROUPS_FILE" in text for text in texts(app.info))
