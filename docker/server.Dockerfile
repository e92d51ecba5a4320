# The team tracking server: MLflow with the guarded basic auth and the PostgreSQL driver. The
# versions are the ones the test suite runs (`pytest tests/test_server*.py` starts the same
# entrypoint). The base image is pinned by digest and every Python package by hash, so a
# rebuild installs exactly what was reviewed; docs/team-server.md says how to move the pins.
FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

COPY server-requirements.txt /tmp/server-requirements.txt
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/server-requirements.txt \
    && rm /tmp/server-requirements.txt

# A named volume mounted on /mlartifacts starts with this folder's owner and mode, so the
# unprivileged server can write artifacts to a fresh volume that nobody else reads.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mlflow \
    && install -d -o mlflow -g mlflow -m 0700 /mlartifacts
# The entrypoint finds the guard and the secret checks beside itself.
COPY mlflow-server.sh secrets.sh healthcheck.py rotating_log.py /usr/local/lib/cifar-mlflow/
COPY guard /usr/local/lib/cifar-mlflow/guard

USER 10001:10001
WORKDIR /tmp
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=10s --retries=8 \
    CMD ["python", "/usr/local/lib/cifar-mlflow/healthcheck.py"]
ENTRYPOINT ["/usr/local/lib/cifar-mlflow/mlflow-server.sh"]
