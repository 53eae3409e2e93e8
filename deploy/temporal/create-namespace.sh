#!/bin/sh
# Creates the namespace exchange-kernel uses, unless it exists. Runs in temporalio/admin-tools.
# Namespaces are an operator's decision (retention!): `exchange-kernel setup` only checks them.
set -eu

NAMESPACE="${NAMESPACE:-default}"
RETENTION="${RETENTION:-30d}"
TEMPORAL_ADDRESS="${TEMPORAL_ADDRESS:-temporal:7233}"

attempt=1
until temporal operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; do
  if [ "$attempt" -ge 60 ]; then
    echo "Temporal at $TEMPORAL_ADDRESS is not healthy after $attempt attempts" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  sleep 2
done

if temporal operator namespace describe --namespace "$NAMESPACE" --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; then
  echo "namespace $NAMESPACE exists"
else
  temporal operator namespace create --namespace "$NAMESPACE" --retention "$RETENTION" \
    --address "$TEMPORAL_ADDRESS"
  echo "namespace $NAMESPACE created (retention $RETENTION)"
fi
