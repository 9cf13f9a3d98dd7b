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
USER aigw
ENV AIGW_DATA_DIR=/var/lib/aigw
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz')"
ENTRYPOINT ["aigw"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
