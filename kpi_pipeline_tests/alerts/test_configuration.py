"""Alerting configuration: environment variables -> settings -> channel and policy resources."""

import re

import dagster as dg

from kpi_pipeline.config import PROJECT_ROOT, Settings
from kpi_pipeline.defs.resources import alert_resources

ISSUE_NAMES = {
    "KPI_SMTP_HOST",
    "KPI_SMTP_PORT",
    "KPI_SMTP_USER",
    "KPI_SMTP_PASSWORD",
    "KPI_SMTP_STARTTLS",
    "KPI_ALERT_EMAIL_FROM",
    "KPI_ALERT_EMAIL_TO",
    "KPI_SLACK_TOKEN",
    "KPI_SLACK_CHANNEL",
    "KPI_SLACK_BASE_URL",
    "KPI_TWILIO_ACCOUNT_SID",
    "KPI_TWILIO_AUTH_TOKEN",
    "KPI_TWILIO_FROM",
    "KPI_ALERT_SMS_TO",
    "KPI_TWILIO_BASE_URL",
    "KPI_ALERT_ROUTES",
}


def test_env_example_documents_real_settings_including_every_channel_variable():
    text = (PROJECT_ROOT / ".env.example").read_text()
    names = set(re.findall(r"^(KPI_[A-Z0-9_]+)=", text, flags=re.MULTILINE))

    assert ISSUE_NAMES <= names
    assert {name.removeprefix("KPI_").lower() for name in names} <= set(Settings.model_fields)


def test_channels_are_off_without_settings_and_base_urls_default_to_the_real_services():
    resources = alert_resources(Settings())

    assert [name for name in ("email", "slack", "sms") if resources[name].is_configured] == []
    assert resources["slack"].base_url == "https://slack.com/api/"
    assert resources["sms"].base_url == "https://api.twilio.com"


def test_environment_variables_configure_the_channels_and_secrets_stay_references(monkeypatch):
    monkeypatch.setenv("KPI_SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("KPI_ALERT_EMAIL_FROM", "kpi@example.com")
    monkeypatch.setenv("KPI_ALERT_EMAIL_TO", "a@example.com, b@example.com")
    monkeypatch.setenv("KPI_SLACK_TOKEN", "xoxb-secret-value")
    monkeypatch.setenv("KPI_ALERT_COOLDOWN_MINUTES", "30")

    resources = alert_resources(Settings())

    assert resources["email"].is_configured
    assert resources["email"].default_recipients() == ["a@example.com", "b@example.com"]
    assert resources["slack"].token == dg.EnvVar("KPI_SLACK_TOKEN")
    assert "xoxb-secret-value" not in repr(resources["slack"])
    assert resources["alert_policy"].cooldown_minutes == 30
