#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d): one owner
# role per database of irnn-search, none of them a superuser, each allowed into its own database
# only. Idempotent. The superuser (POSTGRES_USER) is for this script and an administrator only.
#   irnn   - our experiment database (irnn-search db upgrade)
#   optuna - Optuna's storage (studies and trials)
#   mlflow - MLflow's tracking store
# The roles' password comes from IRNN_PG_PASSWORD through psql's \getenv, never a command line.
set -eu
: "${IRNN_PG_PASSWORD:?set IRNN_PG_PASSWORD (see docs/deploy.md)}"
for db in irnn optuna mlflow; do
    IRNN_DB="$db" psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv db IRNN_DB
\getenv password IRNN_PG_PASSWORD
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', :'db')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'db')\gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'db', :'password')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'db')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db')\gexec
SQL
done
