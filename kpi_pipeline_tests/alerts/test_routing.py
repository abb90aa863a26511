"""Routing (kpi_pipeline/alerts/routing.py): which anomaly reaches which recipient."""

import pytest

from kpi_pipeline.alerts.routing import load_routing
from kpi_pipeline_tests.alerts.samples import anomaly

ON = {"email": ["oncall@example.com"], "slack": ["#kpi"], "sms": ["+15551234567"]}


def test_default_route_sends_high_and_critical_to_every_channel_that_is_on():
    routing = load_routing(None)
    everyone = {("email", "oncall@example.com"), ("slack", "#kpi"), ("sms", "+15551234567")}

    assert routing.targets(anomaly(severity="critical"), ON) == everyone
    assert routing.targets(anomaly(severity="high"), ON) == everyone
    assert routing.targets(anomaly(severity="medium"), ON) == set()
    assert routing.targets(anomaly(), {"slack": ["#kpi"]}) == {("slack", "#kpi")}


def test_routes_match_kpi_patterns_and_minimum_severity(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(
        """
default_route: false
routes:
  - name: revenue team
    kpis: [revenue, "sales*"]
    min_severity: medium
    channels:
      email: [finance@example.com, cfo@example.com]
      slack: ["#revenue"]
  - name: on-call
    min_severity: critical
    channels:
      sms:
"""
    )
    routing = load_routing(path)

    assert routing.targets(anomaly(kpi="sales_eu", severity="medium"), ON) == {
        ("email", "finance@example.com"),
        ("email", "cfo@example.com"),
        ("slack", "#revenue"),
    }
    assert routing.targets(anomaly(kpi="orders", severity="high"), ON) == set()
    assert routing.targets(anomaly(kpi="orders", severity="critical"), ON) == {("sms", "+15551234567")}
    # A route to a channel that is off sends nothing there.
    assert routing.targets(anomaly(kpi="revenue", severity="low"), ON) == set()
    assert routing.targets(anomaly(kpi="revenue", severity="high"), {"sms": ["+1"]}) == set()


def test_the_default_route_stays_unless_switched_off(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  - kpis: [revenue]\n    min_severity: low\n    channels: {slack: ['#rev']}\n")

    targets = load_routing(path).targets(anomaly(kpi="revenue", severity="high"), ON)

    assert ("slack", "#rev") in targets and ("email", "oncall@example.com") in targets


@pytest.mark.parametrize(
    "text",
    [
        "routes:\n  - channels: {pager: [x]}\n",
        "routes:\n  - min_severity: huge\n    channels: {}\n",
        "routes: [unclosed\n",
        "rutes: []\n",
    ],
)
def test_a_bad_routing_file_is_one_clear_error(tmp_path, text):
    path = tmp_path / "routes.yaml"
    path.write_text(text)

    with pytest.raises(ValueError, match=f"alert routing file {path}"):
        load_routing(path)


def test_outages_and_anomalies_can_go_to_different_people(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(
        """
default_route: false
routes:
  - name: collectors down
    kpis: ["*_rpm"]
    events: [outage]
    min_severity: low
    channels:
      sms: ["+15550001111"]
  - name: analysts
    events: [anomaly]
    min_severity: high
    channels:
      slack: ["#kpi"]
"""
    )
    routing = load_routing(path)
    outage = anomaly(kpi="checkout_rpm", severity="high", value=None, flagged_by="gap")
    spike = anomaly(kpi="checkout_rpm", severity="high", flagged_by="prophet")

    assert outage.kind == "outage" and spike.kind == "anomaly"
    assert routing.targets(outage, ON) == {("sms", "+15550001111")}
    assert routing.targets(spike, ON) == {("slack", "#kpi")}
    # Without `events` a route sends both, as before.
    assert load_routing(None).targets(outage, ON) == load_routing(None).targets(spike, ON)


def test_a_route_with_no_or_unknown_events_is_refused(tmp_path):
    for events in ("[]", "[outages]"):
        path = tmp_path / "routes.yaml"
        path.write_text(f"routes:\n  - events: {events}\n    channels:\n      sms:\n")
        with pytest.raises(ValueError, match="events"):
            load_routing(path)
