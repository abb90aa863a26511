"""One settings object for the whole product, read once from the environment.

Every tunable that a user may want to change lives here with its default; everything else
receives a ``Settings`` instance (or the value it needs) instead of reading the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

# The embedded default database lives beside the checkout so a new user needs no server.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SQLITE_PATH = PROJECT_ROOT / ".kpi" / "kpi.db"


class Settings(BaseSettings):
    """Environment-driven configuration (prefix ``KPI_``)."""

    model_config = SettingsConfigDict(env_prefix="KPI_", extra="ignore")

    database_url: str | None = None
    """SQLAlchemy URL. Unset: an embedded SQLite file at ``.kpi/kpi.db``."""

    holiday_country: str = "US"
    """Country code for the ``holidays`` package (holiday features and Prophet holidays)."""

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        DEFAULT_SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{DEFAULT_SQLITE_PATH}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
