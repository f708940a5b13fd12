# The Sieve image: one image for the worker, the collector and the CLI.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY streams ./streams
COPY aggregations ./aggregations
RUN pip install --no-cache-dir .
# Secrets are mounted at run time (see docker-compose.yml), never baked into the image.
ENV SIEVE_DATA_ROOT=/data \
    SIEVE_WORK_DIR=/work
VOLUME ["/data"]
ENTRYPOINT ["sieve"]
CMD ["--help"]
