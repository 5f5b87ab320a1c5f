# lokal's container image (Docker or Podman). Two variants, by build argument:
#
#   docker build -t lokal .                                # llama.cpp only: GGUF chat, completion,
#                                                          # embeddings, rerank (the small image)
#   docker build -t lokal:full --build-arg VARIANT=full .  # also sentence-transformers and
#                                                          # faster-whisper, on torch's CPU build
#
#   docker run -p 8080:8080 -v lokal-models:/models lokal
#
# Everything comes from Debian's packages and the Python package index (torch's CPU wheel
# from TORCH_INDEX_URL); nothing is downloaded from GitHub or a model hub. Behind a proxy that
# re-signs TLS, hand pip the proxy's CA bundle as a build secret (it stays out of the image):
#
#   docker build --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt -t lokal .
#
# Proxy settings (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) are build arguments Docker and Podman
# pass on by themselves.

ARG VARIANT=llama

# Build stage: a virtual environment in /opt/lokal with lokal and its dependencies.
FROM debian:bookworm-slim AS build
ARG VARIANT
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/lokal
# torch first, its wheel alone from the CPU index (the package index's Linux build of torch
# brings CUDA, GBs); what it depends on comes from the package index with the rest below.
RUN --mount=type=secret,id=ca-certificates --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi; \
    case "$VARIANT" in \
      llama) ;; \
      full) /opt/lokal/bin/pip install --no-deps --index-url "$TORCH_INDEX_URL" torch==2.13.0 ;; \
      *) echo "VARIANT must be llama or full, not '$VARIANT'" >&2; exit 1 ;; \
    esac
# The dependencies, from pyproject.toml alone (an empty package and README stand in for
# lokal's), so that this layer is rebuilt only when they change, not with every change to
# the source or the README.
COPY pyproject.toml /src/
RUN --mount=type=secret,id=ca-certificates --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi; \
    mkdir -p /src/src/lokal && touch /src/src/lokal/__init__.py /src/README.md \
    && extras=$([ "$VARIANT" = full ] && echo "[sentence-transformers,whisper]" || true) \
    && /opt/lokal/bin/pip install "/src$extras" \
    && rm -rf /src/src /src/build /src/README.md
COPY README.md /src/
COPY src /src/src
RUN --mount=type=secret,id=ca-certificates --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi; \
    /opt/lokal/bin/pip install --no-deps --force-reinstall /src

# Runtime stage: Debian's Python, the environment, no compilers and no build files.
FROM debian:bookworm-slim
ARG VARIANT
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --create-home --home-dir /home/lokal lokal \
    && mkdir /models && chown lokal:lokal /models
COPY --from=build /opt/lokal /opt/lokal
ENV PATH=/opt/lokal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODELS_PATH=/models \
    ADDRESS=0.0.0.0:8080
LABEL org.opencontainers.image.title="lokal" \
      org.opencontainers.image.description="LocalAI- and OpenAI-compatible inference server (${VARIANT})"
USER lokal
WORKDIR /home/lokal
VOLUME /models
EXPOSE 8080
# Ready once the preloaded models are loaded (/readyz answers 503 until then).
HEALTHCHECK --interval=30s --timeout=10s --start-period=5m --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ.get('ADDRESS', ':8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=8)"]
# tini forwards SIGTERM to lokal, which lets running requests finish (SHUTDOWN_GRACE,
# 30 s by default: give `docker stop -t` or compose's stop_grace_period a little more).
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["lokal", "serve"]
