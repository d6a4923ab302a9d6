# Motes on its embedded engines: one container, data in /data.
#   docker build -t motes .
#   docker run -p 8086:8086 -v motes-data:/data -e MOTES_INIT_TOKEN=<16+ characters> motes
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY motes ./motes
RUN pip install --no-cache-dir . && useradd --system --home /data motes \
    && mkdir -p /data && chown motes /data

USER motes
ENV MOTES_DATA_DIR=/data \
    MOTES_HTTP_HOST=0.0.0.0 \
    MOTES_HTTP_PORT=8086
EXPOSE 8086
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8086/health')"
# SIGTERM flushes queued writes and exits 0; give it time
STOPSIGNAL SIGTERM
CMD ["motes", "serve"]
