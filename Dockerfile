# batchsub in a container. By default it is the drop-folder daemon on the /data volume:
#   docker run -d -v batchsub-data:/data -p 9100:9100 -e HUAWEICLOUD_SDK_AK -e HUAWEICLOUD_SDK_SK \
#     -e HUAWEICLOUD_SDK_PROJECT_ID -e BATCHSUB_REGION=cn-north-4 batchsub
# (drop manifests into /data/inbox). A one-shot run instead:
#   docker run --rm -v $PWD/manifests:/manifests -v batchsub-data:/data ... batchsub run /manifests
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
EXPOSE 9100
# SIGTERM (docker stop) drains in-flight requests; give it more than the 30 s drain timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["batchsub"]
CMD ["watch", "/data/inbox", "--metrics-port", "9100"]
