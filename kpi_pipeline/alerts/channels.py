"""Alert channels: email over SMTP, Slack (``chat.postMessage``), SMS via Twilio's Messages API.

Each channel is a Dagster ``ConfigurableResource`` built from ``KPI_*`` environment variables
(``defs/resources.py``). A channel missing a required setting is off. ``send`` delivers one
message to one recipient or raises ``DeliveryError``, which says whether trying again later can
help (a server error, a timeout, a rate limit) or not (a configuration error the operator must
fix); the outbox (``alerts/outbox.py``) owns retries and backoff.
"""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import formatdate
from typing import ClassVar

import dagster as dg
import httpx
from pydantic import Field
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from kpi_pipeline.alerts.messages import Message

SLACK_RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
"""Slack ``error`` codes worth retrying; every other error is a configuration problem."""


class DeliveryError(Exception):
    """A message was not delivered.

    ``retryable``: a later attempt may succeed (server error, timeout, rate limit); otherwise the
    channel's configuration or the recipient is wrong. ``retry_after``: seconds the service
    asked us to wait (HTTP ``Retry-After``).
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def _recipients(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class AlertChannel(dg.ConfigurableResource):
    """What every channel offers the outbox."""

    kind: ClassVar[str]
    required: ClassVar[Mapping[str, str]]
    """Field name -> environment variable of the settings without which the channel is off."""

    timeout_seconds: float = Field(default=10.0, description="Network timeout of one send.")

    def missing_settings(self) -> list[str]:
        """Environment variables the channel still needs; empty when it is on."""
        return [env for name, env in self.required.items() if not getattr(self, name)]

    @property
    def is_configured(self) -> bool:
        return not self.missing_settings()

    def default_recipients(self) -> list[str]:
        raise NotImplementedError

    def send(self, recipient: str, message: Message) -> None:
        raise NotImplementedError


class EmailChannel(AlertChannel):
    """Email over SMTP, with optional STARTTLS and login; a plain-text and an HTML part."""

    kind: ClassVar[str] = "email"
    required: ClassVar[Mapping[str, str]] = {
        "host": "KPI_SMTP_HOST",
        "sender": "KPI_ALERT_EMAIL_FROM",
    }

    host: str = ""
    port: int = 587
    user: str = Field(default="", description="Login user; empty: no login.")
    password: str = ""
    starttls: bool = Field(default=True, description="Upgrade the connection with STARTTLS.")
    sender: str = ""
    recipients: str = Field(default="", description="Default recipients, comma-separated.")

    def default_recipients(self) -> list[str]:
        return _recipients(self.recipients)

    def build(self, recipient: str, message: Message) -> EmailMessage:
        email = EmailMessage()
        email["Subject"] = message.subject
        email["From"] = self.sender
        email["To"] = recipient
        email["Date"] = formatdate(localtime=False)
        # The same alert always has the same id, so a mail system can drop a resent copy.
        digest = hashlib.sha256(f"{message.key}|{recipient}".encode()).hexdigest()[:32]
        email["Message-ID"] = f"<{digest}@kpi-pipeline>"
        email.set_content(message.text)
        email.add_alternative(message.html, subtype="html")
        return email

    def send(self, recipient: str, message: Message) -> None:
        email = self.build(recipient, message)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
                smtp.ehlo()
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if self.user:
                    smtp.login(self.user, self.password)
                smtp.send_message(email, from_addr=self.sender, to_addrs=[recipient])
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            raise DeliveryError(
                f"SMTP refused {recipient}: {error.recipients}",
                retryable=all(400 <= code < 500 for code in codes),
            ) from error
        except smtplib.SMTPResponseException as error:
            # SMTP reply codes: 4xx is a temporary failure worth retrying (e.g. 421 service not
            # available), 5xx a permanent one (e.g. 535 bad login, 550 no such mailbox).
            text = (
                error.smtp_error.decode(errors="replace")
                if isinstance(error.smtp_error, bytes)
                else str(error.smtp_error)
            )
            raise DeliveryError(f"SMTP {error.smtp_code}: {text}", retryable=400 <= error.smtp_code < 500) from error
        except smtplib.SMTPNotSupportedError as error:
            raise DeliveryError(f"SMTP server: {error}", retryable=False) from error
        except ssl.SSLCertVerificationError as error:
            raise DeliveryError(f"SMTP TLS: {error}", retryable=False) from error
        except (smtplib.SMTPException, OSError) as error:
            # Connection refused or dropped, timeouts, DNS: the server may be back later.
            raise DeliveryError(f"SMTP {self.host}:{self.port}: {error}", retryable=True) from error


class SlackChannel(AlertChannel):
    """Slack through ``slack_sdk``: ``chat.postMessage`` with Block Kit blocks."""

    kind: ClassVar[str] = "slack"
    required: ClassVar[Mapping[str, str]] = {"token": "KPI_SLACK_TOKEN"}

    token: str = ""
    channel: str = Field(default="", description="Default channel (name or id).")
    base_url: str = Field(default="https://slack.com/api/", description="Slack Web API base URL.")

    def default_recipients(self) -> list[str]:
        return _recipients(self.channel)

    def send(self, recipient: str, message: Message) -> None:
        # No SDK retry handlers: the outbox decides about retries, for every channel alike.
        client = WebClient(
            token=self.token,
            base_url=self.base_url,
            timeout=max(1, round(self.timeout_seconds)),
            retry_handlers=[],
        )
        try:
            client.chat_postMessage(channel=recipient, text=message.slack_text, blocks=message.slack_blocks)
        except SlackApiError as error:
            response = error.response
            code = response.get("error") if isinstance(response.data, dict) else None
            status = response.status_code
            retry_after = _seconds(response.headers.get("Retry-After")) if status == 429 else None
            raise DeliveryError(
                f"Slack HTTP {status}: {code or response.data!r}",
                retryable=status == 429 or status >= 500 or code in SLACK_RETRYABLE_ERRORS,
                retry_after=retry_after,
            ) from error
        except (SlackClientError, OSError) as error:
            raise DeliveryError(f"Slack {self.base_url}: {error}", retryable=True) from error


class SmsChannel(AlertChannel):
    """SMS through Twilio's Messages REST API: ``POST /2010-04-01/Accounts/{sid}/Messages.json``."""

    kind: ClassVar[str] = "sms"
    required: ClassVar[Mapping[str, str]] = {
        "account_sid": "KPI_TWILIO_ACCOUNT_SID",
        "auth_token": "KPI_TWILIO_AUTH_TOKEN",
        "sender": "KPI_TWILIO_FROM",
    }

    account_sid: str = ""
    auth_token: str = ""
    sender: str = Field(default="", description="Sending number (E.164) or a messaging service id (MG...).")
    recipients: str = Field(default="", description="Default recipients (E.164), comma-separated.")
    base_url: str = Field(default="https://api.twilio.com", description="Twilio API base URL.")

    def default_recipients(self) -> list[str]:
        return _recipients(self.recipients)

    def send(self, recipient: str, message: Message) -> None:
        url = f"{self.base_url.rstrip('/')}/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        sender_field = "MessagingServiceSid" if self.sender.startswith("MG") else "From"
        form = {"To": recipient, sender_field: self.sender, "Body": message.sms}
        try:
            response = httpx.post(
                url,
                data=form,
                auth=(self.account_sid, self.auth_token),
                timeout=self.timeout_seconds,
            )
        except httpx.HTTPError as error:
            raise DeliveryError(f"Twilio {self.base_url}: {error}", retryable=True) from error
        if response.is_success:
            return
        status = response.status_code
        raise DeliveryError(
            f"Twilio HTTP {status}: {_twilio_error(response)}",
            retryable=status == 429 or status >= 500,
            retry_after=_seconds(response.headers.get("Retry-After")) if status == 429 else None,
        )


def _twilio_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return f"{body.get('code')} {body.get('message')}" if isinstance(body, dict) else str(body)


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def announce_off_channels(
    channels: Mapping[str, AlertChannel], log: Callable[[str], None], announced: set[str]
) -> None:
    """Log once per channel (tracked in ``announced``) that it is off and what it needs."""
    for name, channel in channels.items():
        missing = channel.missing_settings()
        if missing and name not in announced:
            log(f"{name} alerts are off: set {', '.join(missing)} to turn them on")
            announced.add(name)
