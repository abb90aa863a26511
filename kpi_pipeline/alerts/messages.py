"""What an alert says, rendered for each channel: email (plain text + HTML), SMS, Slack blocks.

One anomaly gives a single alert; several (a digest) give one message listing them, worst first.
Every alert states the KPI, the time (in the configured zone, and UTC), actual vs expected value
and band, the deviation in %, severity, score, the model(s) that flagged it, and links to the
Dagster UI and the API sidecar.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import pandas as pd

from kpi_pipeline.alerts.anomaly import Anomaly

SMS_SEGMENT = 160
"""Characters of one GSM-7 SMS segment: an SMS is cut to this length."""

DIGEST_LISTED = 20
"""Anomalies a Slack digest lists one by one (Slack limits a message's blocks and text)."""

SCORES_CONTEXT = pd.Timedelta(hours=24)
"""How much of the series before an anomaly its API link asks for."""

SEVERITY_EMOJI = {
    "low": ":large_blue_circle:",
    "medium": ":large_yellow_circle:",
    "high": ":large_orange_circle:",
    "critical": ":red_circle:",
}


@dataclass(frozen=True)
class Links:
    """Base URLs of the Dagster UI and the API sidecar."""

    dagster_url: str
    api_url: str

    def asset_page(self) -> str:
        return f"{self.dagster_url.rstrip('/')}/assets/anomaly_scores"

    def kpi_scores(self, anomaly: Anomaly) -> str:
        """The API's scored series around ``anomaly``."""
        window = {
            "start": (anomaly.ts - SCORES_CONTEXT).isoformat(),
            "end": (anomaly.ts + pd.Timedelta(hours=1)).isoformat(),
        }
        kpi = quote(anomaly.kpi, safe="")
        return f"{self.api_url.rstrip('/')}/v1/kpis/{kpi}/scores?{urlencode(window)}"

    def anomalies_since(self, since: pd.Timestamp) -> str:
        query = urlencode({"since": since.isoformat()})
        return f"{self.api_url.rstrip('/')}/v1/anomalies?{query}"


@dataclass(frozen=True)
class Message:
    """One alert, rendered for every channel."""

    key: str
    """Stable identity of the message (the outbox's message key), e.g. for an email Message-ID."""
    subject: str
    text: str
    html: str
    sms: str
    slack_text: str
    """Slack's notification / fallback text."""
    slack_blocks: list[dict]


def render(anomalies: Sequence[Anomaly], links: Links, timezone: str = "UTC", key: str = "") -> Message:
    """The message for one anomaly, or the digest of several (worst first)."""
    if not anomalies:
        raise ValueError("an alert needs at least one anomaly")
    ordered = sorted(anomalies, key=lambda a: (-a.rank, a.ts, a.kpi))
    fmt = _Formatter(timezone)
    if len(ordered) == 1:
        return _single(ordered[0], links, fmt, key)
    return _digest(ordered, links, fmt, key)


def _what(anomaly: Anomaly) -> str:
    """What an alert is about: an outage, a KPI group's event, or an anomaly."""
    if anomaly.kind == "outage":
        return "outage"
    return "group event" if anomaly.members is not None else "anomaly"


def _single(anomaly: Anomaly, links: Links, fmt: _Formatter, key: str) -> Message:
    level = anomaly.severity.upper()
    deviation, when = fmt.percent(anomaly.deviation), fmt.time(anomaly.ts)
    outage = anomaly.kind == "outage"
    if outage:
        # A KPI that stopped reporting: no value to compare, the news is that data is missing.
        headline = f"{level} outage: {anomaly.kpi} has no data from {when}"
    elif anomaly.members is not None:
        headline = f"{level} group event: {anomaly.kpi} at {when}: {anomaly.members}"
    else:
        headline = f"{level} anomaly: {anomaly.kpi} {deviation} at {when}"
    facts = fmt.facts(anomaly)
    urls = [("Dagster UI", links.asset_page()), ("API", links.kpi_scores(anomaly))]
    width = max(len(label) for label, _ in [*facts, *urls]) + 2
    text = "\n".join(
        [
            headline,
            "",
            *(f"{label + ':':<{width}}{value}" for label, value in facts),
            "",
            *(f"{label + ':':<{width}}{url}" for label, url in urls),
            "",
        ]
    )
    rows = "".join(f"<tr><th align='left'>{_h(label)}</th><td>{_h(value)}</td></tr>" for label, value in facts)
    body = f"<h2>{_h(headline)}</h2><table>{rows}</table><p>{' · '.join(_a(label, url) for label, url in urls)}</p>"
    sms = (
        f"{level} {anomaly.kpi} {fmt.short_time(anomaly.ts)}: "
        f"{fmt.actual(anomaly, ascii_only=True)} vs {fmt.number(anomaly.expected)} exp "
        f"({fmt.band(anomaly, ascii_only=True)}), {deviation}, score {fmt.score(anomaly.score)}, "
        f"{fmt.models(anomaly)}"
    )
    if outage:
        sms = f"{level} OUTAGE {anomaly.kpi}: no data from {fmt.short_time(anomaly.ts)}"
    elif anomaly.members is not None:
        sms = f"{level} {anomaly.kpi} {fmt.short_time(anomaly.ts)}: {anomaly.members}, score {fmt.score(anomaly.score)}"
    blocks = [
        _header(f"{SEVERITY_EMOJI.get(anomaly.severity, '')} {level} {_what(anomaly)}: {anomaly.kpi}"),
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{label}*\n{_s(value)}"} for label, value in facts[1:]],
        },
        _buttons(urls),
    ]
    return _message(key, headline, text, body, sms, blocks, links)


def _digest(ordered: list[Anomaly], links: Links, fmt: _Formatter, key: str) -> Message:
    kpis = sorted({a.kpi for a in ordered})
    worst = ordered[0]
    headline = f"{len(ordered)} anomalies in {len(kpis)} KPI{'s' if len(kpis) > 1 else ''} (worst: {worst.severity})"
    since = min(a.ts for a in ordered)
    urls = [("Dagster UI", links.asset_page()), ("API", links.anomalies_since(since))]
    columns = ["severity", "kpi", "time", "actual", "expected", "band", "deviation", "score", "flagged by"]
    table = [fmt.row(a) for a in ordered]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in [columns, *table]]
    text = "\n".join([headline, "", *lines, "", *(f"{label}: {url}" for label, url in urls), ""])
    head = "".join(f"<th align='left'>{_h(c)}</th>" for c in columns)
    body_rows = "".join("<tr>" + "".join(f"<td>{_h(v)}</td>" for v in row) + "</tr>" for row in table)
    body = (
        f"<h2>{_h(headline)}</h2><table><tr>{head}</tr>{body_rows}</table>"
        f"<p>{' · '.join(_a(label, url) for label, url in urls)}</p>"
    )
    listed = ordered[:DIGEST_LISTED]
    bullet_lines = "\n".join(
        f"{SEVERITY_EMOJI.get(a.severity, '')} *{_s(a.kpi)}* {_s(fmt.time(a.ts))}: "
        f"{_s(fmt.actual(a))} vs {_s(fmt.number(a.expected))} expected "
        f"({_s(fmt.percent(a.deviation))}), {a.severity}, score {fmt.score(a.score)}, "
        f"{_s(fmt.models(a))}"
        for a in listed
    )
    blocks = [
        _header(headline),
        {"type": "section", "text": {"type": "mrkdwn", "text": bullet_lines}},
    ]
    if len(ordered) > len(listed):
        more = f"… and {len(ordered) - len(listed)} more (all in the email digest and the API)"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
    blocks.append(_buttons(urls))
    sms = (
        f"{len(ordered)} KPI anomalies; worst {worst.severity.upper()} {worst.kpi} "
        f"{fmt.short_time(worst.ts)} {fmt.percent(worst.deviation)}"
    )
    return _message(key, headline, text, body, sms, blocks, links)


class _Formatter:
    """Numbers and times as alerts show them."""

    def __init__(self, timezone: str) -> None:
        self.timezone = timezone

    def time(self, ts: pd.Timestamp) -> str:
        utc = ts.tz_convert("UTC")
        if self.timezone.upper() == "UTC":
            return f"{utc:%Y-%m-%d %H:%M} UTC"
        local = utc.tz_convert(self.timezone)
        return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({utc:%H:%M} UTC)"

    def short_time(self, ts: pd.Timestamp) -> str:
        local = ts.tz_convert(self.timezone)
        return f"{local:%m-%d %H:%M} {local.tzname()}"

    @staticmethod
    def number(value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"

    @staticmethod
    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.0%}"

    @staticmethod
    def score(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    def actual(self, anomaly: Anomaly, ascii_only: bool = False) -> str:
        if anomaly.value is None:
            return "missing" if ascii_only else "missing (data gap)"
        return self.number(anomaly.value)

    def band(self, anomaly: Anomaly, ascii_only: bool = False) -> str:
        if anomaly.lower is None or anomaly.upper is None:
            return "n/a"
        dash = "-" if ascii_only else " – "
        return f"{self.number(anomaly.lower)}{dash}{self.number(anomaly.upper)}"

    @staticmethod
    def models(anomaly: Anomaly) -> str:
        return anomaly.flagged_by.replace(",", "+") if anomaly.flagged_by else "n/a"

    def facts(self, anomaly: Anomaly) -> list[tuple[str, str]]:
        if anomaly.members is not None:  # a group event
            return [
                ("Group", anomaly.kpi.removeprefix("group:")),
                ("Time", self.time(anomaly.ts)),
                ("Members that moved", anomaly.members),
                ("Severity", anomaly.severity),
                ("Score", self.score(anomaly.score)),
                ("Event", anomaly.event_id or "n/a"),
            ]
        return [
            ("KPI", anomaly.kpi),
            ("Time", self.time(anomaly.ts)),
            ("Actual", self.actual(anomaly)),
            ("Expected", self.number(anomaly.expected)),
            ("Band", self.band(anomaly)),
            ("Deviation", self.percent(anomaly.deviation)),
            ("Severity", anomaly.severity),
            ("Score", self.score(anomaly.score)),
            ("Flagged by", self.models(anomaly)),
            ("Event", anomaly.event_id or "n/a"),
        ]

    def row(self, anomaly: Anomaly) -> list[str]:
        return [
            anomaly.severity,
            anomaly.kpi,
            self.time(anomaly.ts),
            self.actual(anomaly),
            self.number(anomaly.expected),
            self.band(anomaly),
            self.percent(anomaly.deviation),
            self.score(anomaly.score),
            self.models(anomaly),
        ]


def _message(key: str, headline: str, text: str, body: str, sms: str, blocks: list, links: Links) -> Message:
    """One message in every channel's form, with the same headline everywhere."""
    return Message(
        key=key,
        subject=f"[kpi-pipeline] {headline}",
        text=text,
        html=_html_document(body),
        sms=_sms(sms, links.asset_page()),
        slack_text=headline,
        slack_blocks=blocks,
    )


def _sms(text: str, link: str) -> str:
    """``text`` plus ``link`` if both fit one segment; otherwise ``text`` cut to one segment."""
    if len(text) + 1 + len(link) <= SMS_SEGMENT:
        return f"{text} {link}"
    return text if len(text) <= SMS_SEGMENT else text[: SMS_SEGMENT - 3] + "..."


def _header(text: str) -> dict:
    # Slack caps header text at 150 characters.
    return {"type": "header", "text": {"type": "plain_text", "text": text.strip()[:150]}}


def _buttons(urls: list[tuple[str, str]]) -> dict:
    return {
        "type": "actions",
        "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url} for label, url in urls
        ],
    }


def _html_document(body: str) -> str:
    return f"<!DOCTYPE html><html><body style='font-family:sans-serif'>{body}</body></html>"


def _h(text: str) -> str:
    return html.escape(text, quote=True)


def _a(label: str, url: str) -> str:
    return f"<a href='{_h(url)}'>{_h(label)}</a>"


def _s(text: str) -> str:
    """Text safe inside Slack mrkdwn (which reserves &, < and >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
