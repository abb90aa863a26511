"""Notify every write of ``kpi_observations`` and ``kpi_models`` (Postgres).

Revision ID: 0004
Revises: 0003
Create Date: 2025-04-01

Real-time scoring (``POST /v1/score``) keeps, per KPI, its newest model and its newest
observations judged; each request probed the database twice to check they were still current.
These statement-level triggers send one notification per KPI written on
``kpi_inputs_written`` (payload: the KPI's name; empty: any KPI, for ``TRUNCATE`` or a name
too long for a payload), delivered when the writing transaction commits, whoever writes:
``kpi-pipeline ingest``, the API, or a loader inserting rows directly. An API worker listening
to them needs no probe while it listens (``store.notifications``), after checking on connecting
that these triggers are there and enabled. SQLite has no notifications: nothing changes there.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHANNEL = "kpi_inputs_written"
TABLES = ("kpi_observations", "kpi_models")

# One notification per KPI in the statement's rows; Postgres refuses payloads of 8000 bytes.
_NOTIFY = f"""
    PERFORM pg_notify('{CHANNEL}', CASE WHEN octet_length(kpi) < 8000 THEN kpi ELSE '' END)
    FROM (SELECT kpi FROM {{rows}}) AS written GROUP BY kpi;
"""

FUNCTIONS = {
    "kpi_inputs_written_rows": _NOTIFY.format(rows="changed_rows"),
    # An update can move a row to another KPI: both KPIs changed.
    "kpi_inputs_written_updated": _NOTIFY.format(rows="changed_rows UNION ALL SELECT kpi FROM old_rows"),
    "kpi_inputs_written_any": f"PERFORM pg_notify('{CHANNEL}', '');",
}

TRIGGERS = {
    "inserted": ("AFTER INSERT", "REFERENCING NEW TABLE AS changed_rows", "kpi_inputs_written_rows"),
    "updated": (
        "AFTER UPDATE",
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS changed_rows",
        "kpi_inputs_written_updated",
    ),
    "deleted": ("AFTER DELETE", "REFERENCING OLD TABLE AS changed_rows", "kpi_inputs_written_rows"),
    "truncated": ("AFTER TRUNCATE", "", "kpi_inputs_written_any"),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, body in FUNCTIONS.items():
        op.execute(f"""
            CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                {body}
                RETURN NULL;
            END $$""")
    for table in TABLES:
        for event, (when, referencing, function) in TRIGGERS.items():
            op.execute(f"""
                CREATE TRIGGER {table}_{event}_notify {when} ON {table} {referencing}
                FOR EACH STATEMENT EXECUTE FUNCTION {function}()""")
            # Also in sessions with session_replication_role = replica (logical replication,
            # pg_restore --disable-triggers): a write there must be announced too.
            op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_{event}_notify")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        for event in TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_{event}_notify ON {table}")
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {name}()")
