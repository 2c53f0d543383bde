"""Settings read from the environment, once, at the edge of each process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    conductor_api_url: str
    database_url: str
    data_dir: Path
    log_level: str
    log_format: str
    api_token: str | None
    max_removals_per_run: int
    removal_retry_seconds: float

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        data_dir = Path(env.get("DATA_DIR") or "./data").resolve()
        database_url = env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'backtor.db'}"
        return cls(
            conductor_api_url=(env.get("CONDUCTOR_API_URL") or "http://localhost:8080/api").rstrip(
                "/"
            ),
            database_url=normalize_database_url(database_url),
            data_dir=data_dir,
            log_level=(env.get("LOG_LEVEL") or "info").upper(),
            log_format=(env.get("LOG_FORMAT") or "text").lower(),
            api_token=env.get("BACKTOR_API_TOKEN") or None,
            max_removals_per_run=int(env.get("BACKTOR_MAX_REMOVALS_PER_RUN") or "20"),
            removal_retry_seconds=float(env.get("BACKTOR_REMOVAL_RETRY_SECONDS") or "30"),
        )


def normalize_database_url(url: str) -> str:
    """Route plain postgresql:// URLs to psycopg 3, the driver Backtor ships with."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
