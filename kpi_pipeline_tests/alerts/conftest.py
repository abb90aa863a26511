"""Fixtures of the alert tests: the databases, and a local Slack Web API with a channel on it."""

import pytest

from kpi_pipeline.alerts.channels import SlackChannel
from kpi_pipeline_tests.alerts.databases import module_pg_engine, pg_engine  # noqa: F401
from kpi_pipeline_tests.alerts.servers import SlackApi


@pytest.fixture(scope="module")
def slack_api():
    api = SlackApi("xoxb-test").start()
    yield api
    api.stop()


@pytest.fixture
def channels(slack_api):
    slack_api.reset()
    return {"slack": SlackChannel(token="xoxb-test", channel="#kpi", base_url=slack_api.base_url)}
