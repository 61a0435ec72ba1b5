#!/usr/bin/env bash
# prometheus-config.sh — prints the Prometheus configuration that scrapes pdpool's pods on the
# local rack. Debian's Prometheus is built without Kubernetes service discovery, so the targets
# come from the controller's HTTP service discovery (GET /prometheus/targets on its metrics
# port, built from its pod cache): every running pod labelled pdpool.dev/pool at its container
# port named `http` (workers :8000, routers :8080, which serve /metrics), labelled namespace,
# pod, pool and role — the labels the planner's queries and the dashboards use, and the same
# ones the Helm chart's PodMonitor gives the series on a cluster with kubernetes_sd.
#
# Usage: prometheus-config.sh --controller HOST:PORT [--scrape-interval 2s]
#   The controller's metrics address: its /prometheus/targets lists the pods, and its own
#   /metrics (the planner's pdpool_planner_* series) is scraped too.
set -euo pipefail

interval="2s"
controller=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --scrape-interval) interval="$2"; shift 2 ;;
    --controller) controller="$2"; shift 2 ;;
    *) echo "prometheus-config.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$controller" ]]; then
  echo "prometheus-config.sh: --controller HOST:PORT is required" >&2
  exit 2
fi

cat <<YAML
global:
  scrape_interval: ${interval}
  evaluation_interval: ${interval}
scrape_configs:
  - job_name: pdpool-pods
    # As the chart's PodMonitor: a series' own labels win (a worker's role switches the moment
    # it does; the router's pdpool_router_workers{role} keeps the workers' roles).
    honor_labels: true
    http_sd_configs:
      - url: http://${controller}/prometheus/targets
        refresh_interval: ${interval}
  - job_name: pdpool-controller
    honor_labels: true
    static_configs:
      - targets: ['${controller}']
YAML
