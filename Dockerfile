# The Sieve image: one image for the worker, the collector and the CLI.
FROM python:3.11-slim
WORKDIR /app
# LICENSE: pyproject.toml declares it (license-files); the installed package carries it.
COPY pyproject.toml README.md LICENSE ./
COPY schemas ./schemas
COPY streams ./streams
COPY aggregations ./aggregations
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /work sieve \
 && mkdir -p /data /work /secrets \
 && chown sieve:sieve /data /work /secrets \
 && chmod 0700 /secrets
# Secrets are made in, or mounted into, /secrets at run time (see docker-compose.yml), never
# baked into the image. Named volumes mounted on /data and /secrets start out owned by the
# sieve user (Docker copies the mount point's owner into a new volume).
ENV SIEVE_DATA_ROOT=/data \
    SIEVE_WORK_DIR=/work
USER sieve
VOLUME ["/data"]
ENTRYPOINT ["sieve"]
CMD ["--help"]
