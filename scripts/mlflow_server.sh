#!/usr/bin/env bash
# Start an MLflow tracking server for a sweep on a Ray cluster, and print the URI to pass with
# --tracking-uri. The backend is SQL (sqlite by default, or any SQLAlchemy URI) and artifacts are
# served by the server from a folder on shared storage, so trials on any node upload through HTTP.
#
#   scripts/mlflow_server.sh /shared/mlflow                 # binds 127.0.0.1:5000
#   MLFLOW_HOST=0.0.0.0 MLFLOW_PORT=5000 scripts/mlflow_server.sh /shared/mlflow
#   MLFLOW_BACKEND=postgresql://user:pw@db/mlflow scripts/mlflow_server.sh /shared/mlflow
#
# It binds to loopback unless MLFLOW_HOST says otherwise. Binding 0.0.0.0 exposes an
# unauthenticated server that anyone on the network can read and write (runs, artifacts, models):
# do it only on a private cluster network or behind an authenticating proxy.
set -euo pipefail
root=$(realpath -m "${1:?usage: $0 SHARED_DIR}")
host=${MLFLOW_HOST:-127.0.0.1}
port=${MLFLOW_PORT:-5000}
backend=${MLFLOW_BACKEND:-sqlite:///$root/mlflow.db}
mkdir -p "$root/artifacts"
uri_host=$host
[[ $host == 0.0.0.0 ]] && uri_host=$(hostname -I | awk '{print $1}')
echo "MLflow tracking URI: http://$uri_host:$port   (pass it with --tracking-uri)"
exec mlflow server --host "$host" --port "$port" --backend-store-uri "$backend" \
  --artifacts-destination "$root/artifacts" --serve-artifacts
