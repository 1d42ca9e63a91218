#!/bin/sh
# The Feast SQL registry's database and its owner, beside MLflow's: the Postgres image runs this
# (a ConfigMap in /docker-entrypoint-initdb.d) once, when it initializes an empty data directory,
# as its superuser (POSTGRES_USER) over the local socket. The password is the feast-postgres
# Secret's file; psql quotes it (:'password'), so no character of it is read as SQL.
set -eu
password="$(cat "${FEAST_PASSWORD_FILE:-/run/secrets/feast/password}")"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=password="$password" <<'SQL'
CREATE ROLE feast LOGIN PASSWORD :'password';
CREATE DATABASE feast OWNER feast;
REVOKE ALL ON DATABASE feast FROM PUBLIC;
SQL
