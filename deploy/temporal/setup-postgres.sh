#!/bin/sh
# Creates (or upgrades) Temporal's two PostgreSQL databases: the persistence store and the SQL
# visibility store, whose custom search attributes `exchange-kernel setup` registers.
# Runs in temporalio/admin-tools (it has temporal-sql-tool and the schema files). Safe to run
# again: an existing schema only gets the newer versions.
set -eu

: "${POSTGRES_SEEDS:?POSTGRES_SEEDS is required}"
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${SQL_PASSWORD:?SQL_PASSWORD is required}"
DB_PORT="${DB_PORT:-5432}"
SCHEMA=/etc/temporal/schema/postgresql/v12

until nc -z -w 5 "$POSTGRES_SEEDS" "$DB_PORT"; do
  echo "waiting for PostgreSQL at $POSTGRES_SEEDS:$DB_PORT"
  sleep 1
done

for pair in temporal:temporal temporal_visibility:visibility; do
  db="${pair%%:*}"
  dir="${pair##*:}"
  tool="temporal-sql-tool --plugin postgres12 --ep $POSTGRES_SEEDS -u $POSTGRES_USER -p $DB_PORT --db $db"
  # An existing, versioned schema only needs the newer versions; a new one is created first.
  if $tool update-schema -d "$SCHEMA/$dir/versioned" >/dev/null 2>&1; then
    echo "database $db: schema up to date"
  else
    $tool create || echo "database $db: exists"
    $tool setup-schema -v 0.0
    $tool update-schema -d "$SCHEMA/$dir/versioned"
  fi
done
echo "PostgreSQL schemas ready"
