"""Alert channels (kpi_pipeline/alerts/channels.py) against local SMTP, Slack and Twilio servers."""

import pytest

from kpi_pipeline.alerts.channels import (
    DeliveryError,
    EmailChannel,
    SlackChannel,
    SmsChannel,
    announce_off_channels,
)
from kpi_pipeline.alerts.messages import Links, render
from kpi_pipeline_tests.alerts.samples import anomaly
from kpi_pipeline_tests.alerts.servers import (
    Response,
    SlackApi,
    SmtpServer,
    TwilioApi,
    free_port,
    self_signed_certificate,
)

MESSAGE = render([anomaly()], Links("http://dagster.test", "http://api.test"), key="orders@1")


@pytest.fixture(scope="module")
def twilio_api():
    api = TwilioApi("AC123", "twilio-secret").start()
    yield api
    api.stop()


@pytest.fixture(autouse=True)
def _fresh_apis(request):
    yield
    for name in ("slack_api", "twilio_api"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()


@pytest.fixture
def smtp():
    server = SmtpServer().start()
    yield server
    server.stop()


def _email(port: int, **options) -> EmailChannel:
    return EmailChannel(host="127.0.0.1", port=port, sender="kpi@example.com", **({"starttls": False} | options))


def _refusal(send) -> DeliveryError:
    with pytest.raises(DeliveryError) as raised:
        send()
    return raised.value


# -- email --------------------------------------------------------------------------------


def test_email_arrives_with_headers_recipient_and_both_parts(smtp):
    _email(smtp.port).send("oncall@example.com", MESSAGE)

    [mail] = smtp.received
    assert (mail.sender, mail.recipients) == ("kpi@example.com", ["oncall@example.com"])
    assert mail.message["From"] == "kpi@example.com" and mail.message["To"] == "oncall@example.com"
    assert mail.message["Subject"] == MESSAGE.subject
    resent = _email(smtp.port).build("oncall@example.com", MESSAGE)
    assert mail.message["Message-ID"] == resent["Message-ID"]  # stable: a resend can be dropped
    text = mail.message.get_body(("plain",)).get_content()
    html = mail.message.get_body(("html",)).get_content()
    for figure in ("412", "101", "90", "112", "+308%", "0.83", "prophet+iforest"):
        assert figure in text and figure in html


def test_email_over_starttls_with_login(tmp_path, monkeypatch):
    certificate = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the test certificate
    server = SmtpServer(certificate=certificate, login=("alerts", "s3cret")).start()
    try:
        channel = _email(server.port, starttls=True, user="alerts", password="s3cret")
        channel.send("oncall@example.com", MESSAGE)
        assert server.logins == ["alerts"] and len(server.received) == 1

        bad_login = channel.model_copy(update={"password": "nope"})
        wrong = _refusal(lambda: bad_login.send("x@y.z", MESSAGE))
        assert not wrong.retryable and "535" in str(wrong)
        plain = _refusal(lambda: _email(server.port).send("x@y.z", MESSAGE))
        assert not plain.retryable  # the server demands STARTTLS: a configuration error
    finally:
        server.stop()


def test_email_temporary_refusal_and_a_down_server_are_retryable(smtp):
    smtp.refuse_with = "451 4.3.0 Try again later"
    busy = _refusal(lambda: _email(smtp.port).send("oncall@example.com", MESSAGE))
    assert busy.retryable and "451" in str(busy)

    smtp.refuse_with = "554 5.7.1 Rejected"
    assert not _refusal(lambda: _email(smtp.port).send("oncall@example.com", MESSAGE)).retryable

    down = _refusal(lambda: _email(free_port()).send("oncall@example.com", MESSAGE))
    assert down.retryable and "refused" in str(down).lower()


# -- Slack --------------------------------------------------------------------------------


def _slack(api: SlackApi, token: str = "xoxb-test") -> SlackChannel:
    return SlackChannel(token=token, channel="#kpi", base_url=api.base_url)


def test_slack_posts_blocks_with_the_bot_token(slack_api):
    _slack(slack_api).send("#kpi", MESSAGE)

    [request] = slack_api.requests
    assert request.path == "/api/chat.postMessage"
    assert request.headers["Authorization"] == "Bearer xoxb-test"
    body = request.json()
    assert body["channel"] == "#kpi" and body["text"] == MESSAGE.slack_text
    assert body["blocks"] == MESSAGE.slack_blocks


def test_slack_rate_limit_and_server_errors_are_retryable_with_retry_after(slack_api):
    slack_api.fail_next(
        Response(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}),
        Response(503, {"ok": False, "error": "service_unavailable"}),
    )
    limited = _refusal(lambda: _slack(slack_api).send("#kpi", MESSAGE))
    assert limited.retryable and limited.retry_after == 7.0
    unavailable = _refusal(lambda: _slack(slack_api).send("#kpi", MESSAGE))
    assert unavailable.retryable and unavailable.retry_after is None


def test_slack_configuration_errors_are_not_retried(slack_api):
    bad_token = _refusal(lambda: _slack(slack_api, token="xoxb-wrong").send("#kpi", MESSAGE))
    assert not bad_token.retryable and "invalid_auth" in str(bad_token)
    no_channel = _refusal(lambda: _slack(slack_api).send("", MESSAGE))
    assert not no_channel.retryable and "channel_not_found" in str(no_channel)


# -- Twilio -------------------------------------------------------------------------------


def _sms(api: TwilioApi, token: str = "twilio-secret", sender: str = "+15550000000") -> SmsChannel:
    return SmsChannel(account_sid="AC123", auth_token=token, sender=sender, base_url=api.url)


def test_sms_is_one_form_post_with_basic_auth(twilio_api):
    _sms(twilio_api).send("+15551234567", MESSAGE)
    _sms(twilio_api, sender="MG0123").send("+15551234567", MESSAGE)

    first, second = twilio_api.sent
    assert first == {"To": "+15551234567", "From": "+15550000000", "Body": MESSAGE.sms}
    assert second["MessagingServiceSid"] == "MG0123" and "From" not in second
    assert twilio_api.requests[0].headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_sms_server_errors_are_retried_client_errors_are_not(twilio_api):
    twilio_api.fail_next(
        Response(503, {"code": 20503, "message": "Service unavailable"}),
        Response(429, {"code": 20429, "message": "Too many requests"}, {"Retry-After": "2"}),
    )
    assert _refusal(lambda: _sms(twilio_api).send("+15551234567", MESSAGE)).retryable
    limited = _refusal(lambda: _sms(twilio_api).send("+15551234567", MESSAGE))
    assert limited.retryable and limited.retry_after == 2.0

    bad_number = _refusal(lambda: _sms(twilio_api).send("555-1234", MESSAGE))
    assert not bad_number.retryable and "21211" in str(bad_number)
    bad_token = _refusal(lambda: _sms(twilio_api, token="wrong").send("+15551234567", MESSAGE))
    assert not bad_token.retryable and "401" in str(bad_token)
    assert twilio_api.sent == []


# -- configuration ------------------------------------------------------------------------


def test_a_channel_without_settings_is_off_and_says_so_once():
    channels = {
        "email": EmailChannel(host="smtp.test"),
        "slack": SlackChannel(token="x"),
        "sms": SmsChannel(account_sid="AC1"),
    }
    logged: list[str] = []
    announced: set[str] = set()

    announce_off_channels(channels, logged.append, announced)
    announce_off_channels(channels, logged.append, announced)

    assert logged == [
        "email alerts are off: set KPI_ALERT_EMAIL_FROM to turn them on",
        "sms alerts are off: set KPI_TWILIO_AUTH_TOKEN, KPI_TWILIO_FROM to turn them on",
    ]
    assert channels["slack"].is_configured and not channels["email"].is_configured
