# batchsub in a container: `docker run --rm -v $PWD/manifests:/manifests -e HUAWEICLOUD_SDK_AK \
#   -e HUAWEICLOUD_SDK_SK -e HUAWEICLOUD_SDK_PROJECT_ID batchsub run /manifests --region cn-north-4`
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY batchsub ./batchsub
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 batchsub \
    && mkdir -p /data && chown batchsub:batchsub /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER batchsub
WORKDIR /data
# The ledger lives on the volume so that a restarted container never creates a job twice.
ENV BATCHSUB_LEDGER=/data/batchsub.db
VOLUME ["/data"]
ENTRYPOINT ["batchsub"]
CMD ["--help"]
