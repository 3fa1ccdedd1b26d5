#!/usr/bin/env bash
# An MLflow tracking server for the cluster profile, backed by PostgreSQL, artifacts on an object store or a folder.
#   MLFLOW_BACKEND_STORE_URI=postgresql://user@db:5432/mlflow MLFLOW_ARTIFACTS=s3://bucket/mlflow deploy/mlflow-server.sh
# then point the platform at it with MLFLOW_TRACKING_URI=http://<host>:5000.
set -euo pipefail
exec mlflow server \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS:-./mlartifacts}" \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}"
