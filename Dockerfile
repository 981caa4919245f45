# outbox-worker container image: a build stage that builds exactly as a developer does (`make deps`,
# `make build`), and a slim runtime stage with only the shared libraries the binary links.
#
#     docker build -t outbox-worker .
#     docker run --rm -e DATABASE_URL=postgresql://... outbox-worker migrate
#     docker run -d --stop-timeout 40 -e DATABASE_URL=... \
#         -e OUTBOX_HANDLERS=/etc/outbox-worker/handlers.json \
#         -v "$PWD/handlers.json:/etc/outbox-worker/handlers.json:ro" -p 3001:3001 outbox-worker
#
# Give the container a stop timeout above OUTBOX_SHUTDOWN_TIMEOUT_MS (25 s by default) plus about
# 5 s for the handler processes to quit: Docker's default of 10 s would SIGKILL a drain halfway.
# tests/integration/container_test.cpp checks that this build stage and the Makefile agree and that
# the runtime stage carries every library the binary needs.

FROM debian:12-slim AS build
WORKDIR /src
# The Makefile's `deps` target holds the one list of Debian packages that building and testing need,
# so the image cannot drift from a developer's machine. It is copied alone first, so that the
# package layer stays cached until the list changes; make itself is the one package it needs first.
COPY Makefile ./
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && make deps \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN make build
# Debug sections stay out of the runtime image; the symbol table stays, so backtraces keep names.
RUN strip --strip-debug -o /src/outbox-worker build/outbox-worker

FROM debian:12-slim
# What the binary links (libfmt9 comes with libspdlog1.10; the four broker clients of SPEC 4), plus
# the CA bundle for TLS to PostgreSQL
# and to http handlers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libpq5 libuv1 libcjson1 libspdlog1.10 libcurl4 libmicrohttpd12 ca-certificates \
        librdkafka1 libnats3.4 librabbitmq4 libhiredis0.14 \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it without resolving a name.
RUN groupadd --system --gid 10001 outbox \
    && useradd --system --uid 10001 --gid outbox --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin outbox
COPY --from=build /src/outbox-worker /usr/local/bin/outbox-worker
# The example handlers, where `make install` puts them; point OUTBOX_HANDLERS at your own file.
COPY examples/handlers.json /usr/local/share/outbox-worker/handlers.json

# In a container the endpoint must be reachable from outside the network namespace (probes,
# Prometheus); `outbox-worker health` asks a wildcard host on the loopback address.
ENV OUTBOX_HTTP_HOST=0.0.0.0
USER 10001:10001
EXPOSE 3001
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["outbox-worker", "health"]
# The binary runs as PID 1 with no init in front of it: it handles SIGTERM and SIGINT itself (PID 1
# gets no default signal actions) and its SIGCHLD handler reaps every child, including orphans that
# exec handlers leave behind and the kernel re-parents to it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["outbox-worker"]
CMD ["run"]
