# Backtor's image: the API, the scheduler worker and the ready-made storage workers.
# Not built in CI (no Docker engine there); kept in step with constraints.txt by hand.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DATA_DIR=/data
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data backtor \
    && mkdir -p /data /backups && chown backtor /data /backups

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY backtor ./backtor
COPY workflows ./workflows
COPY migrations ./migrations
RUN pip install --no-cache-dir -c constraints.txt . && rm -rf /src

USER backtor
WORKDIR /data
# 6000: the API (and /metrics); 6001: a worker's /health and /ready probes
EXPOSE 6000 6001
ENTRYPOINT ["backtor"]
CMD ["run"]
