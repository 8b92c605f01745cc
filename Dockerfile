# batchsub in a container. By default it is the drop-folder daemon on the /data volume:
#   docker volume create batchsub-data
#   docker run -d --name batchsub --stop-timeout 45 -v batchsub-data:/data \
#     -p 127.0.0.1:9100:9100 -e HUAWEICLOUD_SDK_AK -e HUAWEICLOUD_SDK_SK \
#     -e HUAWEICLOUD_SDK_PROJECT_ID -e BATCHSUB_REGION=cn-north-4 batchsub
# (drop manifests into /data/inbox). A one-shot run instead:
#   docker run --rm -v "$PWD/manifests:/manifests:ro" -v batchsub-data:/data ... batchsub run /manifests
# Volumes, the stop timeout and Kubernetes: README.md, "Deploying"; deploy/ holds manifests.
# Here, without a registry: deploy/build-local.sh (podman, a Debian stand-in for the base).

# The base image, pinned by digest so that a rebuild gets the same Python and Debian packages.
# This digest of python:3.11-slim is the one pinned in public Dockerfiles; it could not be
# checked from the machine this was written on. To pin the current one (and let Renovate or
# Dependabot move it):
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
# and pass it here or with --build-arg BASE_IMAGE=python:3.11-slim@sha256:<digest>.
# Any Debian-based image whose python3 is 3.11 or newer with venv works.
ARG BASE_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The dependencies, in a layer of their own, at the versions of the committed lock (which CI
# installs under too). Only an edit of pyproject.toml or requirements.lock rebuilds it.
COPY pyproject.toml requirements.lock ./
RUN python3 -m venv /opt/batchsub \
    && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > runtime.txt \
    && /opt/batchsub/bin/pip install --constraint requirements.lock --requirement runtime.txt \
    && python3 -m venv /opt/build-tools \
    && /opt/build-tools/bin/pip install --constraint requirements.lock setuptools wheel
# The application: a wheel built offline with the pinned backend, installed without
# dependencies; pip itself is not needed at run time.
COPY README.md ./
COPY batchsub ./batchsub
RUN /opt/build-tools/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/batchsub/bin/pip install --no-deps /tmp/dist/*.whl \
    && /opt/batchsub/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
# VERSION is pyproject.toml's (a test keeps them equal); a release build passes where the
# source is and its commit: --build-arg SOURCE_URL=... --build-arg REVISION=$(git rev-parse HEAD)
ARG VERSION=0.1.0
ARG SOURCE_URL=""
ARG REVISION=""
LABEL org.opencontainers.image.title="batchsub" \
      org.opencontainers.image.description="Submits Huawei Cloud DLI Flink Jar jobs in bulk, exactly once" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}"
# tini runs as PID 1: it hands SIGTERM to batchsub and reaps any child left behind.
# uid/gid 10001, numeric below, so that Kubernetes can check runAsNonRoot.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* \
    && groupadd --gid 10001 batchsub \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin batchsub \
    && install -d -o 10001 -g 10001 -m 0750 /data /data/inbox
# One layer holding only what runs: the virtual environment, copied whole.
COPY --from=build /opt/batchsub /opt/batchsub
ENV PATH=/opt/batchsub/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BATCHSUB_LEDGER=/data/batchsub.db \
    BATCHSUB_METRICS_HOST=0.0.0.0 \
    BATCHSUB_METRICS_PORT=9100
USER 10001:10001
WORKDIR /data
# The ledger and the drop folder live here, so a new container never creates a job twice.
# Mount a named volume (or a directory writable by uid 10001): an anonymous one goes with
# `docker run --rm`, and the ledger with it.
VOLUME ["/data"]
EXPOSE 9100
# SIGTERM drains the requests in flight for up to drain_timeout (30 s): stop with more than
# that (docker run --stop-timeout 45, Kubernetes terminationGracePeriodSeconds: 45).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["batchsub", "healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--", "batchsub"]
CMD ["watch", "/data/inbox"]
