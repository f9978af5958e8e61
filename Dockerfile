# Container image for the authserver gateway (and its local emulator).
#
#   docker build -t authserver:0.1.0 .
#   docker run --read-only --tmpfs /tmp -p 8080:8080 --env-file ... authserver:0.1.0
#
# Two stages: the builder installs the package and its dependencies into a
# virtualenv; the runtime stage copies only that virtualenv onto a clean slim
# base, so no pip cache, compiler or source tree ships in the image.
# tests/deploy/test_image_install.py replays the builder's COPY and
# `pip install` steps into a fresh venv, so keep them plain (one COPY per
# source, one `RUN pip install` line).

FROM python:3.11.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# jemalloc, preloaded at run time (LD_PRELOAD below): under glibc's malloc the
# gateway's resident memory kept growing under steady traffic while its Python
# heap stayed flat; under jemalloc it plateaus (bench/results.md, Soak). The
# library goes into the venv, so the runtime stage still copies only the venv
# (it needs only libc, libm, libgcc_s and libstdc++, which the slim base has).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2=5.3.0-1 \
    && cp /usr/lib/*-linux-gnu/libjemalloc.so.2 /opt/venv/lib/libjemalloc.so.2 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY authserver ./authserver
RUN pip install --no-cache-dir .


FROM python:3.11.11-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="authserver" \
      org.opencontainers.image.description="Token-issuing gateway between MQTT devices and the cloud MQTT token API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Proprietary"

# The bytecode was compiled in the builder; at run time nothing may write to
# the (read-only) root filesystem, and logs go straight to stdout. malloc is
# jemalloc's (authserver_build_info{allocator="jemalloc"} says it took).
ENV PATH=/opt/venv/bin:$PATH \
    LD_PRELOAD=/opt/venv/lib/libjemalloc.so.2 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUTHSERVER_HOST=0.0.0.0 \
    AUTHSERVER_PORT=8080

# A fixed numeric UID/GID so Kubernetes can verify runAsNonRoot without a
# passwd lookup; no home directory, no login shell.
RUN groupadd --system --gid 10001 authserver \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin authserver

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
EXPOSE 8080

# The slim base has no curl: probe /healthz with the standard library. Any
# non-2xx answer or connection error raises and exits non-zero.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('AUTHSERVER_PORT', '8080') + '/healthz', timeout=2)"]

ENTRYPOINT ["authserver"]
CMD ["serve"]
