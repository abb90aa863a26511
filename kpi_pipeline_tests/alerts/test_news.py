"""Which newly scored anomalies are news (kpi_pipeline/alerts/news.py)."""

import pandas as pd

from kpi_pipeline.alerts.news import HISTORY, select_news, silent_run_reason

T0 = pd.Timestamp("2025-03-01", tz="UTC")
WATERMARK = T0 + pd.Timedelta(days=1)
NO_SILENCES = pd.DataFrame(columns=["kpi_pattern", "since", "until", "reason", "created_at"])


def _scored(*rows) -> pd.DataFrame:
    """Anomalies (kpi, ts, feedback) scored after the watermark."""
    return pd.DataFrame(
        [
            {"kpi": kpi, "ts": T0 + pd.Timedelta(hours=h), "severity": "high", "score": 0.8, "feedback": feedback}
            for kpi, h, feedback in rows
        ]
    )


FIRST_SCORED = {"orders": T0, "signups": WATERMARK + pd.Timedelta(minutes=5)}


def _news(scored, **options):
    kwargs = {"watermark": WATERMARK, "first_scored": FIRST_SCORED, "silences": NO_SILENCES}
    return select_news(scored, **(kwargs | options))


def test_new_points_of_a_kpi_scored_before_are_news_a_new_kpi_is_history():
    news = _news(_scored(("orders", 30, None), ("signups", 30, None), ("signups", 31, None)))

    assert [(a.kpi, a.ts) for a in news.alert] == [("orders", T0 + pd.Timedelta(hours=30))]
    assert news.silent == {HISTORY: 2}


def test_without_a_previous_evaluation_everything_is_history():
    news = _news(_scored(("orders", 30, None)), watermark=None)

    assert news.alert == [] and news.silent == {HISTORY: 1}


def test_silent_runs_and_history_alert_only_when_configured():
    scored = _scored(("orders", 30, None), ("signups", 30, None))
    tags = {"dagster/backfill": "abc"}

    assert _news(scored, silent_reason=silent_run_reason(tags)).silent == {"backfill run": 2}
    assert len(_news(scored, silent_reason="backfill run", alert_on_history=True).alert) == 2
    assert silent_run_reason({"kpi/alerts": "off"}) == "run tagged kpi/alerts=off"
    assert silent_run_reason({"kpi/scoring": "true"}) is None


def test_silences_and_false_positives_are_never_news():
    silences = pd.DataFrame(
        [
            {
                "kpi_pattern": "ord*",
                "since": T0 + pd.Timedelta(hours=29),
                "until": T0 + pd.Timedelta(hours=31),
                "reason": "maintenance",
                "created_at": T0,
            }
        ]
    )
    scored = _scored(("orders", 30, None), ("orders", 32, None), ("orders", 33, "false_positive"))

    news = _news(scored, silences=silences, alert_on_history=True)

    assert [a.ts for a in news.alert] == [T0 + pd.Timedelta(hours=32)]
    assert news.silent == {"silenced: maintenance": 1, "marked false positive": 1}
