"""Alerting: channels (email, Slack, SMS), routing, and the delivery outbox.

Flow: the ``no_new_anomalies`` check on ``anomaly_scores`` lists the anomalies that are news
(``news.select_news``); ``anomaly_check_sensor`` reads its evaluations, records alerts in the
``alert_deliveries`` outbox (``outbox.enqueue``: routing, cooldown, digest) and sends what is due
(``outbox.deliver``: retries, backoff). Nothing here runs inside the scoring asset.

Modules: ``anomaly`` (what an alert is about), ``messages`` (rendering), ``channels`` (the
Dagster resources that send), ``routing``, ``news``, ``policy``, ``outbox``, ``cli``. The package
imports nothing itself, so the CLI does not pay for Dagster on start-up.
"""
