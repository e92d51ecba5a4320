-- The tracking server's role and two databases: runs in `mlflow`, users and permissions in
-- `mlflow_auth`, both owned by the role `mlflow`, which is no superuser and can create no
-- databases or roles: a server that is taken over reaches its own data, not the cluster.
-- Run by a superuser with `-v mlflow_password_file=FILE` (the role's password, read here so
-- that it never appears on a command line). Idempotent: the postgres image runs it once on an
-- empty volume (docker/postgres-init.sh), the local launcher (cifar_mlflow/server) on every
-- start.
\set mlflow_password `cat :'mlflow_password_file'`
SELECT format('CREATE ROLE mlflow LOGIN PASSWORD %L', :'mlflow_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow')\gexec
ALTER ROLE mlflow NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
SELECT 'CREATE DATABASE mlflow OWNER mlflow'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow')\gexec
SELECT 'CREATE DATABASE mlflow_auth OWNER mlflow'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow_auth')\gexec
-- Other roles of the cluster, if any, may not connect to them.
REVOKE ALL ON DATABASE mlflow, mlflow_auth FROM PUBLIC;
