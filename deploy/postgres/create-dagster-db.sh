#!/bin/sh
# Runs once, when the postgres container initialises an empty data volume: creates the
# database that Dagster's run and event storage use beside the KPI database ($POSTGRES_DB).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"${DAGSTER_PG_DB:-dagster}\" OWNER \"$POSTGRES_USER\""
