# The team tracking server: MLflow with basic auth and the PostgreSQL driver. The versions are
# the ones the test suite runs (`pytest tests/test_server.py` starts the same entrypoint).
FROM python:3.11-slim-bookworm

RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13"

# A named volume mounted on /mlartifacts starts with this folder's owner, so the unprivileged
# server can write artifacts to a fresh volume.
RUN useradd --system --create-home --uid 10001 mlflow \
    && install -d -o mlflow -g mlflow /mlartifacts
COPY mlflow-server.sh /usr/local/bin/mlflow-server.sh

USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow-server.sh"]
