# aigw gateway image. The embedded PostgreSQL is for the no-setup start;
# in containers point AIGW_DATABASE_URL at a PostgreSQL server (see docker-compose.yml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY src ./src
COPY migrations ./migrations
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /dist

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/aigw --create-home aigw
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl
USER 10001:10001
# Runs with a read-only root filesystem: nothing is written outside the data
# folder and /tmp (mount both writable, e.g. emptyDir volumes in Kubernetes).
ENV AIGW_DATA_DIR=/var/lib/aigw \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz')"
ENTRYPOINT ["aigw"]
# One worker per container: replicas scale out (deploy/helm/aigw), and one worker
# lets AIGW_SHUTDOWN_DRAIN turn /readyz 503 before the listener closes.
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "1"]
