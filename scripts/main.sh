#!/usr/bin/env bash
# The main job: a small study end to end (the activation study, 3 epochs), then the report.
# Usage: bash scripts/main.sh cifar10        offline: bash scripts/main.sh synthetic
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=${1:-cifar10}
source scripts/setup.sh
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
if ! python -m cifar_mlflow data --dataset "$dataset" >/dev/null 2>"$errors"; then
    if [ "$dataset" = cifar10 ] && grep -q "could not be fetched" "$errors"; then
        echo "CIFAR-10 could not be fetched into ./data; to run offline on the synthetic set, change one word: bash scripts/main.sh synthetic" >&2
    else
        tail -n 1 "$errors" >&2
    fi
    exit 2
fi

mlflow run . --env-manager local --experiment-name cifar10 -e sweep \
    -P study=activation -P dataset="$dataset" -P epochs=3
python -m analysis.figures --study activation --output-dir outputs
python -m analysis.report --output outputs/report.html
echo "Report: outputs/report.html. Browse the runs: mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI"
