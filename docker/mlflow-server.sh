#!/usr/bin/env bash
# The one place that turns environment variables into `mlflow server` flags: the server image
# runs it as its entrypoint and `python -m cifar_mlflow server start` runs it on the host, so
# the configuration the tests exercise is the one docker-compose deploys.
#
#   POSTGRES_PASSWORD, MLFLOW_AUTH_ADMIN_PASSWORD (12+ characters),
#   MLFLOW_FLASK_SERVER_SECRET_KEY          required
#   POSTGRES_HOST/PORT/USER                 db, 5432, mlflow
#   MLFLOW_HOST/PORT, MLFLOW_WORKERS        0.0.0.0, 5000, 4
#   MLFLOW_ARTIFACTS_DESTINATION            /mlartifacts
#   MLFLOW_ALLOWED_HOSTS                    extra names clients use (localhost always works)
#   MLFLOW_AUTH_ADMIN_USERNAME              admin
#   MLFLOW_AUTH_DEFAULT_PERMISSION          READ (what users get on experiments of others)
#   MLFLOW_AUTH_CACHE_TTL_SECONDS           60 (0 turns the credential cache off)
#   MLFLOW_AUTH_CONFIG_PATH                 where to write the auth config (a temporary file)
set -euo pipefail

for name in POSTGRES_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
    value=${!name:-}
    if [[ -z $value || $value == change-me* ]]; then
        echo "mlflow-server.sh: set $name to a secret of your own (see .env.example)" >&2
        exit 2
    fi
done
if ((${#MLFLOW_AUTH_ADMIN_PASSWORD} < 12)); then
    echo "mlflow-server.sh: MLFLOW_AUTH_ADMIN_PASSWORD needs at least 12 characters" >&2
    exit 2
fi

# SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the image ships psycopg2.
pg="postgresql+psycopg2://${POSTGRES_USER:-mlflow}@${POSTGRES_HOST:-db}:${POSTGRES_PORT:-5432}"
# libpq reads the password from PGPASSWORD, which keeps it out of the database URIs and so out
# of `ps`, the auth config file and MLflow's logs.
export PGPASSWORD=$POSTGRES_PASSWORD
export MLFLOW_AUTH_ADMIN_USERNAME=${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
# The job runner serves GenAI scorers and evaluations this project does not use, and costs
# seven processes.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

# Users, passwords and permissions live in a second database of the same cluster rather than in
# SQLite on the artifacts volume: one pg_dump procedure backs up all but the artifacts, and the
# uvicorn workers share it without SQLite's "database is locked".
export MLFLOW_AUTH_CONFIG_PATH=${MLFLOW_AUTH_CONFIG_PATH:-$(mktemp --suffix=.ini)}
# Checking a password hash costs about 0.3 s of CPU by design, on every request: a training
# loop that logs each epoch would keep the server busy hashing. Cached credentials make a
# deleted user or changed password take up to the TTL to expire on the other workers.
cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = $pg/mlflow_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI

# uvicorn answers 403 to a Host header it does not list; clients send the name with the port
# unless the port is the scheme's default, so each name is allowed both ways.
IFS=, read -ra extra_hosts <<<"${MLFLOW_ALLOWED_HOSTS:-}"
allowed=()
for name in localhost 127.0.0.1 "${extra_hosts[@]}"; do
    name=${name// /}
    if [[ -n $name ]]; then
        allowed+=("$name" "$name:*")
    fi
done

exec mlflow server \
    --backend-store-uri "$pg/mlflow" \
    --serve-artifacts \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}" \
    --app-name basic-auth \
    --host "${MLFLOW_HOST:-0.0.0.0}" \
    --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-4}" \
    --allowed-hosts "$(IFS=,; echo "${allowed[*]}")"
