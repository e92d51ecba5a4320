# The project's training image for the compose profile `gpu`. PyPI's Linux torch wheels bring
# their own CUDA runtime, so the NVIDIA container toolkit on the host is all a GPU needs.
# .dockerignore lets only the sources into the build context: no .env, secrets, backups,
# checkpoints or data.
FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

WORKDIR /app
COPY . .
# `[gpu]`: nvidia-ml-py, without which MLflow records no GPU utilisation or memory.
RUN pip install --no-cache-dir ".[gpu]" \
    && useradd --system --uid 10002 --user-group --create-home --home-dir /home/trainer \
        --shell /usr/sbin/nologin trainer \
    && install -d -o trainer -g trainer -m 0700 /app/data /app/checkpoints

USER 10002:10002
# The trainer logs in as its own user; its password comes from a Docker secret, checked like
# every other secret before training starts.
ENTRYPOINT ["sh", "-c", ". /app/docker/secrets.sh && read_secret MLFLOW_TRACKING_PASSWORD required && exec python -m cifar_mlflow \"$@\"", "cifar-mlflow"]
