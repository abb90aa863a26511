"""Fixtures for a PostgreSQL database shared by a test module and emptied between its tests:
creating and dropping a database per test costs more than these tests themselves.

Import both fixtures into a test module (or a conftest) to use ``pg_engine``.
"""

import uuid

import pytest
import sqlalchemy as sa

from kpi_pipeline import pipeline
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import TABLES


@pytest.fixture(scope="module")
def module_pg_engine(pg_admin_engine):
    name = f"kpi_test_{uuid.uuid4().hex[:8]}"
    with pg_admin_engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = pipeline.open_store(pg_admin_engine.url.set(database=name))
    try:
        yield engine
    finally:
        engine.dispose()
        with pg_admin_engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_engine(module_pg_engine):
    """An engine on an empty, migrated PostgreSQL database (the module's, emptied after use)."""
    yield module_pg_engine
    names = ", ".join(table.name for table in TABLES)
    with write_transaction(module_pg_engine) as connection:
        connection.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY"))
