from kpi_pipeline_tests.alerts.databases import module_pg_engine, pg_engine  # noqa: F401
