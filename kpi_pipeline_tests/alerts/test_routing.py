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
        ("email", "finance@example.com"), ("email", "cfo@example.com"), ("slack", "#revenue")
    }
    assert routing.targets(anomaly(kpi="orders", severity="high"), ON) == set()
    assert routing.targets(anomaly(kpi="orders", severity="critical"), ON) == {
        ("sms", "+15551234567")
    }
    # A route to a channel that is off sends nothing there.
    assert routing.targets(anomaly(kpi="revenue", severity="low"), ON) == set()
    assert routing.targets(anomaly(kpi="revenue", severity="high"), {"sms": ["+1"]}) == set()


def test_the_default_route_stays_unless_switched_off(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n  - kpis: [revenue]\n    min_severity: low\n    channels: {slack: ['#rev']}\n"
    )

    targets = load_routing(path).targets(anomaly(kpi="revenue", severity="high"), ON)

    assert ("slack", "#rev") in targets and ("email", "oncall@example.com") in targets


@pytest.mark.parametrize(
    "text",
    ["routes:\n  - channels: {pager: [x]}\n", "routes:\n  - min_severity: huge\n    channels: {}\n",
     "routes: [unclosed\n", "rutes: []\n"],
)
def test_a_bad_routing_file_is_one_clear_error(tmp_path, text):
    path = tmp_path / "routes.yaml"
    path.write_text(text)

    with pytest.raises(ValueError, match=f"alert routing file {path}"):
        load_routing(path)
