# The aimarket app image: the gateway (`aimarket up`), the ledger flusher, the billing sender
# and the Ray nodes of helm/aimarket all run it (the Ray nodes need the same Ray, Python and
# `serving` code as the gateway that drives them).
# Build: docker build -t aimarket:0.1.0 .
# Python 3.11: the pinned set in requirements.lock is for 3.11 and 3.12.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/aimarket
COPY pyproject.toml requirements.lock README.md ./
COPY serving ./serving
COPY metering ./metering
COPY storefront ./storefront
COPY export ./export
COPY billing ./billing
COPY sandbox_ui ./sandbox_ui
# The runtime dependencies only (not the test extra), each at its pinned version.
RUN /opt/aimarket/bin/pip install -c requirements.lock .

FROM ${PYTHON_IMAGE}
ARG UID=10001
RUN groupadd --gid ${UID} aimarket \
    && useradd --uid ${UID} --gid ${UID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin aimarket \
    && mkdir -p /data && chown ${UID}:${UID} /data && chmod 0700 /data
COPY --from=build /opt/aimarket /opt/aimarket
# HOME on /tmp: Ray, onnxruntime and Gradio write caches under it; the chart mounts an
# emptyDir there so the root filesystem can stay read-only.
ENV PATH=/opt/aimarket/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    RAY_USAGE_STATS_ENABLED=0 \
    AIMARKET_DATA_DIR=/data
WORKDIR /data
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["aimarket"]
CMD ["up", "--host", "0.0.0.0", "--port", "8000"]
