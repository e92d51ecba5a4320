#!/usr/bin/env bash
# The one place that turns environment variables into `mlflow server` flags: the server image
# runs it as its entrypoint and `python -m cifar_mlflow server start` runs it on the host, so
# the configuration the tests exercise is the one docker-compose deploys.
#
# Secrets, each from NAME or, better, from the file named by NAME_FILE (Docker secrets):
#   POSTGRES_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY   required
#   MLFLOW_AUTH_ADMIN_PASSWORD                         first start only (creates the admin)
# TLS (required; plain HTTP is never served):
#   MLFLOW_TLS_CERT_FILE, MLFLOW_TLS_KEY_FILE          certificate chain and key, PEM
# Settings:
#   POSTGRES_HOST/PORT/USER                 db, 5432, mlflow
#   MLFLOW_HOST/PORT, MLFLOW_WORKERS        0.0.0.0, 5000, 4
#   MLFLOW_PUBLIC_PORT                      the port clients type (MLFLOW_PORT)
#   MLFLOW_ALLOWED_HOSTS                    names clients use, `name` (at the public port) or
#                                           `name:port`; localhost and 127.0.0.1 always; no `*`
#   MLFLOW_ARTIFACTS_DESTINATION            /mlartifacts
#   MLFLOW_AUTH_ADMIN_USERNAME              admin
#   MLFLOW_AUTH_DEFAULT_PERMISSION          READ (what users get on experiments of others)
#   MLFLOW_AUTH_CACHE_TTL_SECONDS           60 (0 turns the credential cache off)
#   MLFLOW_AUTH_CONFIG_PATH                 where to write the auth config (a temporary file)
#   CIFAR_GUARD_STATE                       the login throttle's file (a temporary file)
#   CIFAR_GUARD_CONFINE_ARTIFACTS           true; false lets users pick artifact locations
#   CIFAR_GUARD_MAX_BODY_BYTES              8 MiB: the body of any request but an upload
#   CIFAR_GUARD_MAX_UPLOAD_BYTES            4 GiB: an artifact upload (streamed to disk)
#   MLFLOW_TRUSTED_PROXIES                  addresses of reverse proxies whose X-Forwarded-For
#                                           names the client (none: the peer is the client)
#   MLFLOW_LIMIT_CONCURRENCY                256 connections per worker, then 503
#   MLFLOW_LOG_FILE                         write the server's log there, rotated (10 MB × 5)
set -euo pipefail
umask 077
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=docker/secrets.sh
source "$here/secrets.sh"

read_secret POSTGRES_PASSWORD required
read_secret MLFLOW_FLASK_SERVER_SECRET_KEY required
read_secret MLFLOW_AUTH_ADMIN_PASSWORD optional
for name in MLFLOW_TLS_CERT_FILE MLFLOW_TLS_KEY_FILE; do
    if [[ ! -r ${!name:-} ]]; then
        echo "mlflow-server.sh: set $name to a readable PEM file; the server speaks only TLS" >&2
        exit 2
    fi
done

# Nothing leaves the server for MLflow's usage statistics.
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true

# SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the image ships psycopg2.
pg="postgresql+psycopg2://${POSTGRES_USER:-mlflow}@${POSTGRES_HOST:-db}:${POSTGRES_PORT:-5432}"
# libpq reads the password from a private file, which keeps it out of the database URIs and
# so out of `ps`, the auth config file, MLflow's logs and every process's environment.
export PGPASSFILE
PGPASSFILE=$(mktemp --suffix=.pgpass)
escaped=${POSTGRES_PASSWORD//\\/\\\\}
printf '*:*:*:*:%s\n' "${escaped//:/\\:}" >"$PGPASSFILE"
unset POSTGRES_PASSWORD PGPASSWORD escaped
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
authorization_function = cifar_guard.login:authenticate
INI

# uvicorn answers 403 to a Host header it does not list. Clients send `name:port` unless the
# port is the scheme's default; each name is allowed at exactly one port, never at any.
public_port=${MLFLOW_PUBLIC_PORT:-${MLFLOW_PORT:-5000}}
IFS=, read -ra names <<<"localhost,127.0.0.1,${MLFLOW_ALLOWED_HOSTS:-}"
hosts=() origins=()
for name in "${names[@]}"; do
    name=${name// /}
    if [[ -z $name ]]; then
        continue
    elif [[ $name == *[*?[]* ]]; then
        echo "mlflow-server.sh: MLFLOW_ALLOWED_HOSTS takes exact names, not patterns: $name" >&2
        exit 2
    elif [[ $name != *:* ]]; then
        name=$name:$public_port
    fi
    hosts+=("$name")
    origins+=("https://$name")
    if [[ $name == *:443 ]]; then
        hosts+=("${name%:443}") origins+=("https://${name%:443}")
    fi
done
export CIFAR_GUARD_ORIGINS
CIFAR_GUARD_ORIGINS=$(IFS=,; echo "${origins[*]}")
export CIFAR_GUARD_STATE=${CIFAR_GUARD_STATE:-$(mktemp --suffix=.sqlite)}
# The guard (docker/guard) registers the app `cifar-guard` through the dist-info folder beside
# it, which Python's entry-point lookup finds on the path: nothing to install.
export PYTHONPATH=$here/guard${PYTHONPATH:+:$PYTHONPATH}

# The admin is created by a process of its own, the only one that ever holds its password: the
# server's processes never have it in their environment.
if [[ -n ${MLFLOW_AUTH_ADMIN_PASSWORD:-} ]]; then
    python -c 'from mlflow.server.auth import bootstrap_admin_user; bootstrap_admin_user()'
    unset MLFLOW_AUTH_ADMIN_PASSWORD
fi

# TLS 1.2 with AEAD suites and forward secrecy only, or TLS 1.3 (whose suites are all AEAD).
uvicorn_opts=(--ssl-certfile "$MLFLOW_TLS_CERT_FILE" --ssl-keyfile "$MLFLOW_TLS_KEY_FILE"
    --ssl-ciphers 'ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL'
    --limit-concurrency "${MLFLOW_LIMIT_CONCURRENCY:-256}")
# uvicorn trusts X-Forwarded-For from 127.0.0.1 by default, where every local account connects.
if [[ -n ${MLFLOW_TRUSTED_PROXIES:-} ]]; then
    uvicorn_opts+=(--proxy-headers --forwarded-allow-ips "$MLFLOW_TRUSTED_PROXIES")
else
    uvicorn_opts+=(--no-proxy-headers)
fi
if [[ -n ${MLFLOW_LOG_FILE:-} ]]; then
    exec > >(exec python "$here/rotating_log.py" "$MLFLOW_LOG_FILE") 2>&1
fi

exec python -m mlflow server \
    --backend-store-uri "$pg/mlflow" \
    --serve-artifacts \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}" \
    --app-name cifar-guard \
    --host "${MLFLOW_HOST:-0.0.0.0}" \
    --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-4}" \
    --allowed-hosts "$(IFS=,; echo "${hosts[*]}")" \
    --cors-allowed-origins "$CIFAR_GUARD_ORIGINS" \
    --uvicorn-opts "$(printf '%q ' "${uvicorn_opts[@]}")"
