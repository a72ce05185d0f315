# tasktree's service (`tasktree serve`), as run by docker-compose.yml.
FROM python:3.11.11-slim-bookworm

RUN useradd --system --create-home --home-dir /var/lib/tasktree tasktree
WORKDIR /src
COPY instrumentation/ instrumentation/
COPY exporter/ exporter/
RUN pip install --no-cache-dir ./instrumentation ./exporter

USER tasktree
# Binding beyond loopback needs TASKTREE_AUTH_TOKEN, or ingest and viewer/operator tokens
# (tasktree refuses to start without them; README "Authentication").  Web sign-ins are signed
# with TASKTREE_SECRET_KEY, else a key kept in TASKTREE_DATA_DIR (mount it to keep sign-ins).
ENV TASKTREE_HOST=0.0.0.0 \
    TASKTREE_DATA_DIR=/var/lib/tasktree \
    PYTHONUNBUFFERED=1
EXPOSE 8080 4317 4318
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["tasktree", "serve"]
