"""The Streamlit dashboard: ``kpi-pipeline dashboard`` serves ``app.py``.

``app.py`` is the entry script (navigation and sidebar); ``views/`` holds one script per page;
``data.py`` reads through ``kpi_pipeline.store`` with short-lived caching; ``charts.py`` builds
the Plotly figures; ``ui.py`` holds the pieces the pages share. No SQL and no detection logic
live here.
"""
