#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d): create the
# three databases of irnn-search, owned by POSTGRES_USER. Idempotent.
#   irnn   - our experiment database (irnn-search db upgrade)
#   optuna - Optuna's storage (studies and trials)
#   mlflow - MLflow's tracking store
set -eu
for db in irnn optuna mlflow; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
SELECT 'CREATE DATABASE "$db" OWNER "$POSTGRES_USER"'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')\gexec
SQL
done
