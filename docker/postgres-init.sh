#!/bin/sh
# Run once by the postgres image on an empty volume (mounted in /docker-entrypoint-initdb.d),
# as the superuser: creates the server's role with the password of the secret
# `postgres_password`, and its databases (postgres-init.sql).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v mlflow_password_file=/run/secrets/postgres_password \
    -f /usr/local/lib/cifar-mlflow/postgres-init.sql
