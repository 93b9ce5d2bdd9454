# The coordinator and the example participants share this image.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY coordinator ./coordinator
COPY participants ./participants
COPY schemas ./schemas
RUN pip install . && useradd --system --uid 10001 saga
USER saga

# The API listens on every interface of the container, so the coordinator refuses to start
# without SAGA_API_TOKENS (e.g. -e SAGA_API_TOKENS=s3cret:write,ro:read), unless
# SAGA_API_ALLOW_ANONYMOUS=true says an open API is meant (say, behind a private network).
# No definition is registered at start-up: register yours (`saga-coordinator register`,
# POST /v1/definitions), or point SAGA_DEFINITIONS_DIR at a folder of YAML files; the
# examples are in /app/schemas (-e SAGA_DEFINITIONS_DIR=/app/schemas).
ENV SAGA_HTTP_HOST=0.0.0.0
EXPOSE 8080
ENTRYPOINT ["saga-coordinator"]
CMD ["run"]
