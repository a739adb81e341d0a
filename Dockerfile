# The FER tool as a Hugging Face Docker Space (README front matter: sdk: docker, app_port: 7860),
# or on any Docker host:
#   docker build -t fer-tool .                                  # serving (no PyTorch)
#   docker build -t fer-tool-train --build-arg WITH_TRAINING=1 .  # + PyTorch, for training
#   docker run -p 7860:7860 -v fer-data:/data fer-tool
# The relabel database goes to /data/fer_annotations.db when the app can write /data (a Space with
# persistent storage, or the volume above), else beside app.py, lost with the container: the app
# then says so in its log and on the page. The image creates /data owned by uid 1000, so a named
# volume mounted there starts with that owner; a host folder mounted there (-v /host/dir:/data)
# needs `chown 1000 /host/dir`.
FROM python:3.11-slim

# The image serves the app: requirements.txt has no PyTorch (the model runs in ONNX Runtime from
# the ONNX file bundled in fer_core/assets). --build-arg WITH_TRAINING=1 adds requirements-train.txt
# (PyTorch, to train or export weights in the container), with torch and torchvision from
# PyTorch's CPU index: a few hundred MB instead of several GB of CUDA libraries. Another index:
# --build-arg TORCH_INDEX_URL=...
ARG WITH_TRAINING=0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Dependencies first: this layer is rebuilt only when the requirements change.
COPY requirements.txt requirements-train.txt /tmp/
RUN python -m venv /opt/venv \
 && pip install -r /tmp/requirements.txt \
 && if [ "$WITH_TRAINING" = "1" ]; then \
        grep -E '^(torch|torchvision)==' /tmp/requirements-train.txt > /tmp/torch.txt \
        && pip install --index-url "$TORCH_INDEX_URL" -r /tmp/torch.txt \
        && pip install -r /tmp/requirements-train.txt; \
    fi \
 && rm -f /tmp/requirements.txt /tmp/requirements-train.txt /tmp/torch.txt

# Spaces run the container as uid 1000; the app and its caches live in that user's home.
RUN useradd --create-home --uid 1000 user \
 && mkdir -p /data \
 && chown 1000:1000 /data
USER user
ENV HOME=/home/user \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    MPLBACKEND=Agg
WORKDIR /home/user/app

# Only what the app needs (.dockerignore keeps caches and databases out of these folders).
COPY --chown=user:user app.py ./
COPY --chown=user:user fer_core ./fer_core
COPY --chown=user:user annotate ./annotate
COPY --chown=user:user ui ./ui

# The bundled sample's quality, model and duplicate fields, computed once here and cached under
# ~/.cache/fer_tool, so a start only reads them back.
RUN python -c "import app; app.load_data(None)"

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=8)"
CMD ["python", "app.py"]
