-- The tracking server's two databases: runs in `mlflow`, users and permissions in
-- `mlflow_auth`. Idempotent: the postgres image runs it once on an empty volume, the local
-- launcher (cifar_mlflow/server.py) on every start.
SELECT 'CREATE DATABASE mlflow'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow')\gexec
SELECT 'CREATE DATABASE mlflow_auth'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow_auth')\gexec
