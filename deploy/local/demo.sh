#!/usr/bin/env bash
# demo.sh — the local rack demo (the README's `make demo`): pdpool installed with its own Helm
# chart on a real Kubernetes control plane, on a simulated GB200 NVL72 rack, serving and
# autoscaling a Llama-3.1-70B-shaped pool while a production trace is replayed through its router.
# Only the GPUs are simulated: the API server, scheduler, chart, controller (a pod of the chart's
# Deployment, in-cluster config from its ServiceAccount), router and workers are the real ones,
# run as local processes by the node agents (pdpool-agent node --pod-runner process).
#
#   demo.sh [up] [options]   run the demo; everything it started is stopped at the end
#   demo.sh down             stop what an interrupted or --keep run left behind
#
# Options (make demo passes TRACE=, COMPRESSION=, RATE=, DURATION=, WINDOW=, KEEP=1):
#   --trace FILE            trace CSV (default ../shared/traces/azure_llm_2023_conv.csv)
#   --compression C         trace seconds per wall second (default 15: the 58-minute conversation
#                           trace in about 4 minutes, at 15x its request rate)
#   --rate-multiplier X     also scale the request rate by X (default 0.2: keeps each request
#                           with probability 0.2, so the compressed trace peaks at ~25 req/s of
#                           streamed completions, about what 2 CPU cores carry beside the rack)
#   --window START:END      replay only this part of the trace (trace seconds)
#   --duration S            stop the replay after S wall seconds (default: the whole window)
#   --keep                  leave the rack running afterwards (stop it with `make demo-down`)
#
# State lives in .local/demo (kubeconfig, logs, pod logs, Prometheus data); the report goes to
# .local/demo/reports/<UTC time>/ (and .local/demo/reports/latest). Needs `make build` first.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=${PDPOOL_DEMO_DIR:-$ROOT/.local/demo}
BUILD=${BUILD_DIR:-$ROOT/build}
[[ $BUILD == /* ]] || BUILD=$ROOT/$BUILD
CLUSTER="$ROOT/deploy/local/cluster.sh"
HELM="$ROOT/tests/chart/helm.sh"
PIDS="$DIR/demo-pids"
LOGS="$DIR/demo-logs"
NODES_STATE="$DIR/nodes"
POOL_NS=inference
POOL=llama-70b
RELEASE=pdpool
RELEASE_NS=pdpool-system
# Pod IPs: 127.61.x.y on the NVL72 nodes, 127.62.x.y on the H200 nodes (distinct from the
# integration tests' prefixes, so a demo and a test run can share the machine).
NVL72_IP_PREFIX=61
HGX_IP_PREFIX=62

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo.sh: error: $*" >&2; exit 1; }

start_bg() {  # name, command...
  local name=$1; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

# Stops what this demo started (pid files whose process still runs one of our commands), the
# node agents first: they stop their pods (SIGTERM, then the grace period); then the control
# plane.
stop_all() {
  local name f pid
  [[ -d $PIDS ]] || { "$CLUSTER" down --dir "$DIR" --purge >/dev/null 2>&1 || true; return; }
  for name in nodes-nvl72 nodes-hgx prometheus; do
    f="$PIDS/$name.pid"
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null && grep -qa -e pdpool-agent -e prometheus "/proc/$pid/cmdline" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  "$CLUSTER" down --dir "$DIR" --purge >/dev/null 2>&1 || true
}

wait_for() {  # seconds, description, command...
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what (logs: $LOGS, pod logs: $NODES_STATE/*/pods/*/logs)"
    sleep 1
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pool_ready() {
  [[ $(kubectl -n $POOL_NS get ipool $POOL -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

controller_ip() {
  kubectl -n $RELEASE_NS get pods -l app.kubernetes.io/instance=$RELEASE \
    -o jsonpath='{.items[?(@.status.phase=="Running")].status.podIP}' | awk '{print $1}'
}

router_ip() {
  kubectl -n $POOL_NS get pods -l pdpool.dev/pool=$POOL,pdpool.dev/role=router \
    -o jsonpath='{.items[?(@.status.phase=="Running")].status.podIP}' | awk '{print $1}'
}

# The log file of the newest pod matching a name prefix, for the messages that point at logs.
pod_log_dir() { ls -d "$NODES_STATE"/*/pods/"$1"* 2>/dev/null | tail -n 1; }

prom_query() {  # PromQL → "labels value" lines
  curl -fsS --max-time 5 "$PROM_URL/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["data"]["result"]:
    labels = ",".join("%s=%s" % kv for kv in sorted(r["metric"].items()) if kv[0] != "__name__")
    print(labels or "-", "%.4g" % float(r["value"][1]))'
}

write_plots() {  # report dir (with timeseries.csv) and the SLO limits in ms
  local out=$1 ttft_ms=$2 tpot_ms=$3
  gnuplot <<GNUPLOT
set datafile separator ','
set datafile missing ''
set key autotitle columnhead outside top center horizontal
set grid
set xlabel 'wall time (s)'
set terminal pngcairo size 1100,450 font ',10'

set output '$out/replicas.png'
set title 'prefill and decode workers (4 GPUs each): desired by the planner vs ready'
set ylabel 'workers'
set y2label 'GPUs held'
set y2tics
set ytics nomirror
plot '$out/timeseries.csv' using 1:10 with steps lw 2 lc rgb '#1f77b4' title 'prefill desired', \
     '' using 1:9 with steps lw 1 dt 2 lc rgb '#1f77b4' title 'prefill ready', \
     '' using 1:12 with steps lw 2 lc rgb '#d62728' title 'decode desired', \
     '' using 1:11 with steps lw 1 dt 2 lc rgb '#d62728' title 'decode ready', \
     '' using 1:13 axes x1y2 with lines lw 1 lc rgb '#7f7f7f' title 'GPUs (right axis)'
unset y2tics
unset y2label
set ytics mirror

set output '$out/load.png'
set title 'load: requests per second (compressed trace time) and requests in flight'
set ylabel 'requests/s'
set y2label 'in flight'
set y2tics
set ytics nomirror
plot '$out/timeseries.csv' using 1:3 with lines lw 1 lc rgb '#2ca02c' title 'offered', \
     '' using 1:4 with lines lw 1 lc rgb '#9467bd' title 'completed', \
     '' using 1:6 axes x1y2 with lines lw 1 lc rgb '#ff7f0e' title 'in flight (right axis)'
unset y2tics
unset y2label
set ytics mirror

set terminal pngcairo size 1100,700 font ',10'
set output '$out/latency.png'
set multiplot layout 2,1 title 'client-side latency, p90 over the last 10 s, against the SLO'
set yrange [0:*]
set offsets 0, 0, graph 0.1, 0
set title 'time to first token'
set ylabel 'ms'
plot '$out/timeseries.csv' using 1:(\$7*1000) with lines lw 1 lc rgb '#1f77b4' title 'TTFT p90', \
     $ttft_ms with lines lw 2 dt 2 lc rgb '#d62728' title 'SLO ($ttft_ms ms)'
set title 'time per output token'
plot '$out/timeseries.csv' using 1:(\$8*1000) with lines lw 1 lc rgb '#1f77b4' title 'TPOT p90', \
     $tpot_ms with lines lw 2 dt 2 lc rgb '#d62728' title 'SLO ($tpot_ms ms)'
unset multiplot
GNUPLOT
}

cmd_down() {
  stop_all
  echo "demo stopped"
}

cmd_up() {
  local keep=false trace="$ROOT/../shared/traces/azure_llm_2023_conv.csv" compression=15
  local rate=0.2 window="" duration=0
  while (($#)); do
    case $1 in
      --keep) keep=true; shift ;;
      --trace) trace=$2; shift 2 ;;
      --compression) compression=$2; shift 2 ;;
      --rate-multiplier) rate=$2; shift 2 ;;
      --window) window=$2; shift 2 ;;
      --duration) duration=$2; shift 2 ;;
      *) die "unknown option $1 (see the top of $0)" ;;
    esac
  done
  [[ -r $trace ]] || die "trace $trace not readable (the traces are in ../shared/traces)"
  local window_args=()
  if [[ -n $window ]]; then
    [[ $window =~ ^([0-9.]+):([0-9.]*)$ ]] || die "--window wants START:END in trace seconds, got $window"
    window_args=(--window-start "${BASH_REMATCH[1]}" --window-end "${BASH_REMATCH[2]:-0}")
  fi
  local bin
  for bin in pdpool-controller pdpool-agent pdpool-live-replay; do
    [[ -x $BUILD/$bin ]] || die "$BUILD/$bin is missing: run make build"
  done
  command -v gnuplot >/dev/null || die "gnuplot is missing: run make deps"
  [[ $EUID -eq 0 ]] || die "the node agents run pods in their own mount namespaces: run as root"
  mkdir -p "$PIDS" "$LOGS"
  stop_all
  rm -rf "$NODES_STATE" "$DIR/prometheus"
  $keep || trap 'say "stopping everything"; stop_all' EXIT
  trap 'exit 130' INT TERM

  say "1/7 local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler; RBAC on)"
  KUBECONFIG=$("$CLUSTER" up --dir "$DIR" | tail -n 1)
  export KUBECONFIG
  echo "kubeconfig: $KUBECONFIG"

  say "2/7 simulated GPU nodes: GB200 NVL72 (18 x 4 GPUs, NVLink domain nvl72-a) + 4 x 4 H200 (domain hgx-b)"
  local node_args=(--pod-runner process --state-dir "$NODES_STATE" --binary-dir "$BUILD"
                   --restart-backoff 2s --shutdown-grace-period 10s)
  start_bg nodes-nvl72 "$BUILD/pdpool-agent" node --kubeconfig "$KUBECONFIG" --name 'gb200-%02d' \
    --count 18 --gpus 4 --clique nvl72-a --gpu-product NVIDIA-GB200 --ip-prefix $NVL72_IP_PREFIX \
    "${node_args[@]}"
  start_bg nodes-hgx "$BUILD/pdpool-agent" node --kubeconfig "$KUBECONFIG" --name 'h200-%02d' \
    --count 4 --gpus 4 --clique hgx-b --gpu-product NVIDIA-H200 --ip-prefix $HGX_IP_PREFIX \
    "${node_args[@]}"
  wait_for 60 "22 Ready nodes" bash -c \
    "[[ \$(kubectl get nodes --no-headers 2>/dev/null | grep -cw Ready) -ge 22 ]]"
  kubectl get nodes -L nvidia.com/gpu.clique,nvidia.com/gpu.product,nvidia.com/gpu.count | sed -n '1,4p'
  echo "... (22 nodes, 88 GPUs)"

  say "3/7 helm install pdpool (charts/pdpool: CRD, controller Deployment, RBAC)"
  # The pool's namespace first: the chart binds the routers' role there (routerRbac.namespaces).
  kubectl create namespace $POOL_NS >/dev/null
  "$HELM" install $RELEASE "$ROOT/charts/pdpool" --namespace $RELEASE_NS --create-namespace \
    --values "$ROOT/deploy/local/values-local.yaml" --wait --timeout 120s >"$LOGS/helm.log" 2>&1 ||
    die "helm install failed: $(tail -n 5 "$LOGS/helm.log")"
  kubectl -n $RELEASE_NS get deploy,pods -o wide
  local controller
  controller=$(controller_ip)
  [[ -n $controller ]] || die "the controller pod has no IP (see $(pod_log_dir "$RELEASE-"))"

  say "4/7 Prometheus scraping the pools' pods and the controller"
  mkdir -p "$DIR/prometheus"
  local prom_port
  prom_port=$(free_port)
  PROM_URL="http://127.0.0.1:$prom_port"
  "$ROOT/deploy/local/prometheus-config.sh" --controller "$controller:8080" --scrape-interval 5s \
    >"$DIR/prometheus/prometheus.yml"
  start_bg prometheus prometheus --config.file="$DIR/prometheus/prometheus.yml" \
    --storage.tsdb.path="$DIR/prometheus/data" --web.listen-address="127.0.0.1:$prom_port"
  wait_for 60 "Prometheus ready" curl -fsS "$PROM_URL/-/ready"
  echo "Prometheus: $PROM_URL (targets from the controller's /prometheus/targets; Debian's"
  echo "Prometheus has no kubernetes_sd, the chart's PodMonitor does the same on a real cluster)"

  say "5/7 pool $POOL_NS/$POOL: Llama-3.1-70B shape, sim GB200 workers of 4 GPUs, SLO TTFT 450 ms / TPOT 40 ms at p99"
  sed "s#PROMETHEUS_URL#$PROM_URL#" "$ROOT/deploy/local/demo-pool.yaml" >"$DIR/pool.yaml"
  kubectl apply -f "$DIR/pool.yaml"
  wait_for 120 "pool $POOL Ready" pool_ready
  kubectl -n $POOL_NS get ipool
  kubectl -n $POOL_NS get pods -o wide
  local router
  router=$(router_ip)
  [[ -n $router ]] || die "the router pod has no IP"
  wait_for 60 "the router's workers" bash -c \
    "curl -fsS http://$router:8080/readyz"

  local report
  report="$DIR/reports/$(date -u +%Y%m%dT%H%M%SZ)"
  mkdir -p "$report"
  ln -sfn "$report" "$DIR/reports/latest"
  say "6/7 replaying $(basename "$trace") through the router at http://$router:8080 (compressed ${compression}x, rate x$rate)"
  echo "watch it:  export KUBECONFIG=$KUBECONFIG; kubectl -n $POOL_NS get ipool -w"
  "$BUILD/pdpool-live-replay" --router "http://$router:8080" --trace "$trace" \
    --time-compression "$compression" --rate-multiplier "$rate" --duration "$duration" \
    "${window_args[@]}" --max-prompt-tokens 3584 --max-output-tokens 512 \
    --slo-ttft 450ms --slo-tpot 40ms --percentile 99 \
    --kubeconfig "$KUBECONFIG" --namespace $POOL_NS --pool $POOL --out "$report" ||
    die "the replay failed (its output above; router log: $(pod_log_dir "$POOL-router")/logs)"

  say "7/7 report: $report"
  write_plots "$report" 450 40
  cp "$ROOT/charts/pdpool/dashboards/pdpool.json" "$report/grafana-dashboard.json"
  kubectl -n $POOL_NS get ipool $POOL -o yaml >"$report/pool-status.yaml"
  kubectl -n $POOL_NS get events --field-selector involvedObject.kind=InferencePool \
    --sort-by=.lastTimestamp >"$report/pool-events.txt" 2>&1 || true
  {
    echo "# planner decisions (pdpool_planner_decisions_total, from Prometheus)"
    prom_query 'sum by (decision) (pdpool_planner_decisions_total)'
    echo
    echo "# router TTFT p99 over the last minute, as the planner reads it (Prometheus)"
    prom_query 'histogram_quantile(0.99, sum by (le) (rate(pdpool_router_ttft_seconds_bucket[1m])))'
    echo
    echo "# requests by code (pdpool_router_requests_total)"
    prom_query 'sum by (code) (pdpool_router_requests_total)'
  } >"$report/prometheus.txt" 2>&1 || true
  {
    echo "# pdpool rack demo, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "Simulated GB200 NVL72 rack (18 nodes x 4 GPUs) plus 4 x 4 H200, on $(nproc) CPU cores."
    echo "Pool: Llama-3.1-70B shape, sim backend (each worker takes the time a 4-GPU GB200 worker"
    echo "would), SLO TTFT 450 ms / TPOT 40 ms at p99 (MLPerf llama2-70b interactive)."
    echo "Trace: $(basename "$trace")${window:+, window $window s}, compressed ${compression}x in time"
    echo "(the rack saw ${compression}x the trace's request rate for 1/${compression} of its span), rate x$rate."
    echo
    cat "$report/summary.md"
    echo
    echo "Plots: replicas.png, load.png, latency.png. Data: timeseries.csv, requests.csv."
    echo "Dashboard to import into Grafana: grafana-dashboard.json (datasource: your Prometheus)."
    echo "Planner decisions and Prometheus' view: prometheus.txt; pool events: pool-events.txt."
  } >"$report/README.md"
  cat "$report/summary.md"
  sed -n '1,20p' "$report/prometheus.txt"
  echo
  echo "report: $report"
  ls "$report"

  if $keep; then
    say "left running; explore with: export KUBECONFIG=$KUBECONFIG; kubectl get ipool -A"
    echo "Prometheus: $PROM_URL   router: http://$router:8080/v1   stop with: make demo-down"
  else
    say "done; stopping everything (KEEP=1 make demo keeps the rack running)"
  fi
}

case ${1:-up} in
  up) shift || true; cmd_up "$@" ;;
  down) cmd_down ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
  *) die "usage: demo.sh [up [options]|down] (see the top of $0)" ;;
esac
