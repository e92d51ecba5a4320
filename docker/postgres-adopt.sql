-- For a launcher cluster created before `mlflow` stopped being its superuser (initdb -U
-- mlflow): run as `mlflow` with `-v superuser_password_file=FILE`, it creates the superuser
-- `postgres` that postgres-init.sql then runs as, taking mlflow's privileges away.
\set superuser_password `cat :'superuser_password_file'`
SELECT format('CREATE ROLE postgres SUPERUSER LOGIN PASSWORD %L', :'superuser_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'postgres')\gexec
