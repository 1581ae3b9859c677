#!/bin/sh
# Creates (or updates) the read-only role that Grafana's provisioned datasource logs in with, and
# grants it SELECT on exactly the relations the dashboards read — not api_keys, not dead_letters.
# Run by the `grafana-reader` one-shot service of docker-compose.yml after `bacmqtt migrate`, on
# every `docker compose up` (idempotent; a changed GRAFANA_DB_PASSWORD takes effect). Connection:
# the standard PG* variables, as the database owner. Works against any PostgreSQL.
set -eu
: "${GRAFANA_DB_USER:=grafana_reader}"
: "${GRAFANA_DB_PASSWORD:?GRAFANA_DB_PASSWORD is not set}"

psql -X -q -v ON_ERROR_STOP=1 \
  -v reader="$GRAFANA_DB_USER" -v reader_password="$GRAFANA_DB_PASSWORD" <<'SQL'
SET client_min_messages = warning;
SELECT format('CREATE ROLE %I LOGIN', :'reader')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'reader') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L',
              :'reader', :'reader_password') \gexec
SELECT format('ALTER ROLE %I SET default_transaction_read_only = on', :'reader') \gexec
SELECT format('ALTER ROLE %I SET statement_timeout = %L', :'reader', '30s') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'reader') \gexec
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'reader') \gexec
SELECT format('GRANT SELECT ON gateways, devices, points, readings, readings_hourly, readings_daily, '
              'availability_events, write_audit TO %I', :'reader') \gexec
SQL
echo "grafana-reader: role $GRAFANA_DB_USER can read the dashboard relations"
