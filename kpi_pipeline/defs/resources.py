"""Resources: the KPI store (PostgreSQL, or embedded SQLite if unset), the alert channels and
the alerting policy."""

from __future__ import annotations

import os
from functools import cache

import dagster as dg
import sqlalchemy as sa
from pydantic import SecretStr

from kpi_pipeline.alerts.channels import EmailChannel, SlackChannel, SmsChannel
from kpi_pipeline.alerts.policy import AlertPolicy
from kpi_pipeline.config import Settings, get_settings
from kpi_pipeline.pipeline import open_store


class KpiStore(dg.ConfigurableResource):
    """The KPI database every asset reads and writes through ``kpi_pipeline.store``.

    Leave ``database_url`` unset to use ``KPI_DATABASE_URL`` (or the embedded SQLite file), so
    the URL and its password stay in the environment and out of run config.
    """

    database_url: str | None = None

    def engine(self) -> sa.Engine:
        """A pooled engine on the database, migrated to the current schema on first use."""
        return _migrated_engine(self.database_url or get_settings().resolved_database_url())


@cache
def _migrated_engine(url: str) -> sa.Engine:
    # One engine (and pool) per database and process: assets of a run share it.
    return open_store(url)


def alert_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The alert channels (``email``, ``slack``, ``sms``) and ``alert_policy``, from settings.

    Secrets set in the environment are passed as ``dg.EnvVar`` references, so the Dagster UI
    shows the variable's name rather than its value.
    """
    return {
        "email": EmailChannel(
            host=settings.smtp_host,
            port=settings.smtp_port,
            user=settings.smtp_user,
            password=_secret("KPI_SMTP_PASSWORD", settings.smtp_password),
            starttls=settings.smtp_starttls,
            sender=settings.alert_email_from,
            recipients=settings.alert_email_to,
        ),
        "slack": SlackChannel(
            token=_secret("KPI_SLACK_TOKEN", settings.slack_token),
            channel=settings.slack_channel,
            base_url=settings.slack_base_url,
        ),
        "sms": SmsChannel(
            account_sid=settings.twilio_account_sid,
            auth_token=_secret("KPI_TWILIO_AUTH_TOKEN", settings.twilio_auth_token),
            sender=settings.twilio_from,
            recipients=settings.alert_sms_to,
            base_url=settings.twilio_base_url,
        ),
        "alert_policy": AlertPolicy(
            routes_file=settings.alert_routes,
            cooldown_minutes=settings.alert_cooldown_minutes,
            digest_threshold=settings.alert_digest_threshold,
            max_age_hours=settings.alert_max_age_hours,
            alert_on_history=settings.alert_on_history,
            outage_after_intervals=settings.outage_after_intervals,
            timezone=settings.alert_timezone,
            dagster_url=settings.alert_dagster_url,
            api_url=settings.alert_api_url,
        ),
    }


def _secret(env: str, value: SecretStr) -> str:
    if os.environ.get(env):
        return dg.EnvVar(env)
    return value.get_secret_value()
