"""Alert texts (kpi_pipeline/alerts/messages.py): every figure an on-call person needs."""

import pandas as pd

from kpi_pipeline.alerts.messages import DIGEST_LISTED, SMS_SEGMENT, Links, render
from kpi_pipeline_tests.alerts.samples import TS, anomaly

LINKS = Links(dagster_url="http://dagster.test:3000/", api_url="http://api.test:8000")


def test_single_alert_states_every_figure_in_text_html_sms_and_slack():
    message = render([anomaly()], LINKS, key="orders@x")

    assert message.subject == "[kpi-pipeline] HIGH anomaly: orders +308% at 2025-03-11 08:00 UTC"
    for part in (message.text, message.html):
        for figure in (
            "orders",
            "2025-03-11 08:00 UTC",
            "412",
            "101",
            "90",
            "112",
            "+308%",
            "high",
            "0.83",
            "prophet+iforest",
        ):
            assert figure in part
        assert "http://dagster.test:3000/assets/anomaly_scores" in part
        assert "http://api.test:8000/v1/kpis/orders/scores?start=2025-03-10T08" in part
    assert message.sms.startswith(
        "HIGH orders 03-11 08:00 UTC: 412 vs 101 exp (90-112), +308%, score 0.83, prophet+iforest"
    )
    assert len(message.sms) <= SMS_SEGMENT and message.sms.isascii()
    header, section, actions = message.slack_blocks
    assert header["type"] == "header" and "HIGH anomaly: orders" in header["text"]["text"]
    fields = "\n".join(field["text"] for field in section["fields"])
    assert "*Actual*\n412" in fields and "*Deviation*\n+308%" in fields
    assert [button["url"] for button in actions["elements"]][0] == LINKS.asset_page()


def test_times_are_shown_in_the_configured_zone_and_in_utc():
    message = render([anomaly()], LINKS, timezone="Europe/Berlin")

    assert "2025-03-11 09:00 CET (08:00 UTC)" in message.text
    assert "03-11 09:00 CET" in message.sms


def test_a_missing_data_gap_has_no_actual_value_or_deviation():
    gap = anomaly(value=None, lower=None, upper=None, flagged_by="gap", severity="medium")
    message = render([gap], LINKS)

    assert "missing (data gap)" in message.text
    assert "Deviation:  n/a" in message.text and "Band:       n/a" in message.text
    # An outage says so, not "anomaly ... n/a".
    assert message.subject.startswith("[kpi-pipeline] MEDIUM outage: orders has no data from 2025-03-11 08:00 UTC")
    assert message.sms.startswith("MEDIUM OUTAGE orders: no data from")


def test_a_digest_lists_every_anomaly_worst_first_in_one_message():
    anomalies = [anomaly(ts=TS + pd.Timedelta(hours=i), severity="medium") for i in range(30)]
    anomalies.append(anomaly(kpi="revenue", severity="critical", value=5.0, expected=100.0))
    message = render(anomalies, LINKS, key="digest:run-1")

    assert message.subject == "[kpi-pipeline] 31 anomalies in 2 KPIs (worst: critical)"
    rows = [line for line in message.text.splitlines() if line.startswith(("medium", "critical"))]
    assert len(rows) == 31 and rows[0].startswith("critical  revenue") and "-95%" in rows[0]
    assert message.html.count("<tr>") == 32
    listed = message.slack_blocks[1]["text"]["text"].splitlines()
    assert len(listed) == DIGEST_LISTED
    assert "and 11 more" in message.slack_blocks[2]["elements"][0]["text"]
    assert len(message.sms) <= SMS_SEGMENT and "CRITICAL revenue" in message.sms


def test_markup_in_kpi_names_is_escaped():
    message = render([anomaly(kpi="a<b>&c")], LINKS)

    assert "a&lt;b&gt;&amp;c" in message.html and "<b>" not in message.html
    assert "a%3Cb%3E%26c" in message.text  # the API link is URL-encoded
