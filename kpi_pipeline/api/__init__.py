"""The API sidecar: a thin FastAPI service over ``store``, ``pipeline`` and ``detection``.

The application is built by ``kpi_pipeline.api.app.create_app``; this package stays empty so
that the CLI, which registers ``kpi_pipeline.api.cli``, does not import FastAPI to start.
"""
