# gpcrun on top of llama.cpp's official CUDA server image, so llama-server matches the GPU driver stack.
# Images cannot be built on the development machines; see README (Docker).
FROM ghcr.io/ggml-org/llama.cpp:server-cuda

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /opt/gpcrun/
COPY gpcrun /opt/gpcrun/gpcrun
RUN python3 -m venv /opt/gpcrun/.venv && /opt/gpcrun/.venv/bin/pip install --no-cache-dir /opt/gpcrun

ENV PATH=/opt/gpcrun/.venv/bin:$PATH \
    GPCRUN_LLAMA_SERVER=/app/llama-server \
    GPCRUN_HOME=/data/gpcrun
ENTRYPOINT ["gpcrun"]
CMD ["--help"]
