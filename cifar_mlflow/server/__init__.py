"""The team tracking server without Docker: `launcher` (PostgreSQL + `mlflow server` over TLS),
its `postgres` cluster, the unprivileged `account` both run as, `tls` (a generated CA or the
operator's certificate), `backup` (back up and restore), and `cli`
(`python -m cifar_mlflow server ...`). The guard in front of MLflow lives in docker/guard, so
that the image carries it without this package. Clients need none of it: they check a server
with `cifar_mlflow.reachability`.
"""
