"""Alerting: channels (email, Slack, SMS), routing, and the delivery outbox.

Flow: the ``no_new_anomalies`` check on ``anomaly_scores`` judges the anomalies scored since the
previous evaluation recorded in the store (``outbox.queue_news``, ``news.select_news``) and records
alerts for the news in the ``alert_deliveries`` outbox (``outbox.enqueue``: routing, cooldown,
digest); ``anomaly_check_sensor`` sends what is due (``outbox.deliver``: retries, backoff).
Nothing here runs inside the scoring asset.

Modules: ``anomaly`` (what an alert is about), ``messages`` (rendering), ``channels`` (the
Dagster resources that send), ``routing``, ``news``, ``policy``, ``outbox``, ``cli``. The package
imports nothing itself, so the CLI does not pay for Dagster on start-up.
"""
