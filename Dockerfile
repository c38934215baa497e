# Edgebridge: MQTT, Server-Sent Events and HTTP clients <-> Kafka.
#   docker build -t edgebridge .
#   docker run -e KAFKA_BOOTSTRAP=kafka:9092 -p 1883:1883 -p 8080:8080 edgebridge
# Without KAFKA_BOOTSTRAP it starts the embedded, memory-only broker (trying it out only).

# -- build: a wheel of the bridge and its dependencies (nothing of this stage ships) ----------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY protocols ./protocols
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- runtime: slim, non-root, no compilers ---------------------------------------------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGEBRIDGE_CONFIG=/app/routing.toml
RUN useradd --system --uid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin edgebridge
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-compile /wheels/*.whl && rm -rf /wheels
WORKDIR /app
# Owned by root, read-only to the bridge: configuration is not the process's to change.
COPY routing.toml ./routing.toml
COPY schemas ./schemas
USER 10001:10001
# 1883 MQTT, 8080 HTTP/SSE/WebSocket, 9090 admin (/metrics, /healthz, /readyz)
EXPOSE 1883 8080 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["edgebridge", "health"]
# SIGTERM drains: stop accepting, close clients (they resume elsewhere), flush the producer.
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgebridge"]
CMD ["run", "--host", "0.0.0.0"]
