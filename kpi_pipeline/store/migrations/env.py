"""Alembic environment: runs migrations on the connection handed over by ``store.migrate``.

Without one (a developer running ``alembic`` by hand with ``store.database.alembic_config``)
it connects to ``sqlalchemy.url`` or the configured database.
"""

from __future__ import annotations

from alembic import context

from kpi_pipeline.store.schema import metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from kpi_pipeline.store.database import make_engine, write_transaction

    engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        with write_transaction(engine) as connection:
            _run(connection)
    finally:
        engine.dispose()
