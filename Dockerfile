# gpcrun on top of llama.cpp's official CUDA server image, so llama-server matches the GPU driver stack.
# Images cannot be built on the development machines (no Docker engine); CI lints this file with hadolint.
FROM ghcr.io/ggml-org/llama.cpp:server-cuda

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv curl \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /opt/gpcrun/
COPY gpcrun /opt/gpcrun/gpcrun
RUN python3 -m venv /opt/gpcrun/.venv \
 && /opt/gpcrun/.venv/bin/pip install --no-cache-dir /opt/gpcrun

ENV PATH=/opt/gpcrun/.venv/bin:$PATH \
    GPCRUN_LLAMA_SERVER=/app/llama-server \
    GPCRUN_HOME=/data/gpcrun \
    HF_HOME=/data/hf
VOLUME ["/data"]
EXPOSE 8080

# llama-server answers /health with 200 once the model is loaded (503 while loading).
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8080/health"]

ENTRYPOINT ["gpcrun"]
CMD ["--help"]
