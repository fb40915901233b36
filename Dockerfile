# The Egis worker image (docker-compose.yml builds it for the `worker` service).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY egis ./egis
COPY workflows ./workflows
COPY activities ./activities
COPY worker.py starter.py ./
# the otel extra: tracing is on only when OTEL_EXPORTER_OTLP_ENDPOINT is set (docker-compose.yml)
# byte-compile at build time: the runtime user cannot write __pycache__ under /app, and the
# workflow sandbox re-imports workflow modules for every workflow instance
RUN pip install --no-cache-dir ".[otel]" \
    && python -m compileall -q egis workflows activities worker.py starter.py \
    && useradd --system --uid 10001 egis
USER egis
CMD ["python", "worker.py"]
