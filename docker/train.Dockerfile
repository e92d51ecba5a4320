# The project's training image for the compose profile `gpu`. PyPI's Linux torch wheels bring
# their own CUDA runtime, so the NVIDIA container toolkit on the host is all a GPU needs.
FROM python:3.11-slim-bookworm

WORKDIR /app
COPY . .
# `[gpu]`: nvidia-ml-py, without which MLflow records no GPU utilisation or memory.
RUN pip install --no-cache-dir ".[gpu]"

ENTRYPOINT ["python", "-m", "cifar_mlflow"]
