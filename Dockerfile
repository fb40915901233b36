# The Egis worker image (docker-compose.yml builds it for the `worker` service).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY egis ./egis
COPY workflows ./workflows
COPY activities ./activities
COPY worker.py starter.py ./
RUN pip install --no-cache-dir . && useradd --system --uid 10001 egis
USER egis
CMD ["python", "worker.py"]
