#!/usr/bin/env bash
# The local rack demo (placeholder until the full NVL72 autoscaling demo lands): a real
# Kubernetes control plane on loopback, a simulated GB200 NVL72 rack (18 nodes x 4 GPUs in one
# NVLink domain) plus a smaller second domain, the InferencePool CRD, pdpool-controller, and a
# Llama-3.1-70B-shaped sample pool that it places, scales and reports on.
#
#   deploy/local/demo.sh [up] [--keep]   run the demo; --keep leaves everything running
#   deploy/local/demo.sh down            stop whatever a kept or interrupted run left behind
#
# State lives in .local/demo (kubeconfig, logs, pids). Needs `make build` first (make demo does).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=${PDPOOL_DEMO_DIR:-$ROOT/.local/demo}
BUILD=${BUILD_DIR:-$ROOT/build}
CLUSTER="$ROOT/deploy/local/cluster.sh"
PIDS="$DIR/demo-pids"
LOGS="$DIR/demo-logs"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo.sh: $*" >&2; exit 1; }

start_bg() {  # name, command...
  local name=$1; shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
}

stop_all() {
  local f pid
  if [[ -d $PIDS ]]; then
    for f in "$PIDS"/*.pid; do
      [[ -e $f ]] || continue
      pid=$(cat "$f")
      if kill -0 "$pid" 2>/dev/null && grep -q pdpool "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
      fi
      rm -f "$f"
    done
  fi
  "$CLUSTER" down --dir "$DIR" >/dev/null 2>&1 || true
}

wait_for() {  # seconds, description, command...
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what (logs: $LOGS)"
    sleep 1
  done
}

pool_ready() {
  [[ $(kubectl get ipool "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

cmd_down() {
  stop_all
  echo "demo stopped"
}

cmd_up() {
  local keep=false
  [[ ${1:-} == --keep ]] && keep=true
  [[ -x $BUILD/pdpool-controller && -x $BUILD/pdpool-agent ]] || die "build first: make build"
  mkdir -p "$PIDS" "$LOGS"
  stop_all
  $keep || trap 'say "stopping everything"; stop_all' EXIT

  say "1/6 local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler)"
  KUBECONFIG=$("$CLUSTER" up --dir "$DIR" | tail -n 1)
  export KUBECONFIG
  echo "kubeconfig: $KUBECONFIG"

  say "2/6 simulated GPU nodes: GB200 NVL72 (18 x 4 GPUs, domain nvl72-a) + 4 x 4 H200 (domain hgx-b)"
  start_bg nodes-nvl72 "$BUILD/pdpool-agent" node --kubeconfig "$KUBECONFIG" --name gb200 \
    --count 18 --gpus 4 --clique nvl72-a --gpu-product NVIDIA-GB200 --ip-prefix 1
  start_bg nodes-hgx "$BUILD/pdpool-agent" node --kubeconfig "$KUBECONFIG" --name h200 \
    --count 4 --gpus 4 --clique hgx-b --gpu-product NVIDIA-H200 --ip-prefix 2
  wait_for 60 "22 Ready nodes" bash -c \
    "[[ \$(kubectl get nodes --no-headers 2>/dev/null | grep -cw Ready) -ge 22 ]]"
  kubectl get nodes -L nvidia.com/gpu.clique,nvidia.com/gpu.product | sed -n '1,6p'  # sed reads all: no SIGPIPE under pipefail
  echo "..."

  say "3/6 InferencePool CRD and pdpool-controller"
  kubectl apply -f "$ROOT/crds/inferencepools.pdpool.dev.yaml"
  kubectl wait --for condition=established --timeout=60s crd/inferencepools.pdpool.dev
  start_bg controller "$BUILD/pdpool-controller" --kubeconfig "$KUBECONFIG" \
    --metrics-bind-address 127.0.0.1 --metrics-port 0
  echo "controller log: $LOGS/controller.log"

  say "4/6 sample pool: Llama-3.1-70B shape, sim backend, 2 prefill + 4 decode workers x 4 GPUs"
  kubectl apply -f "$ROOT/deploy/samples/llama-70b-sim.yaml"
  wait_for 120 "pool llama-70b-sim Ready" pool_ready llama-70b-sim
  kubectl get ipool
  kubectl get rs,pods -o wide -l pdpool.dev/pool=llama-70b-sim

  say "5/6 scale decode 4 -> 6: the controller resizes the ReplicaSet inside the same NVLink domain"
  kubectl patch ipool llama-70b-sim --type merge -p '{"spec":{"decode":{"replicas":6,"maxReplicas":8}}}'
  wait_for 60 "6 decode replicas ready" bash -c \
    "[[ \$(kubectl get ipool llama-70b-sim -o jsonpath='{.status.decode.readyReplicas}') == 6 ]]"
  kubectl get ipool
  kubectl get pods -l pdpool.dev/pool=llama-70b-sim,pdpool.dev/role=decode -o wide

  say "6/6 a pool that makes no sense (minReplicas > maxReplicas) is reported, not acted on"
  kubectl apply -f "$ROOT/deploy/samples/invalid-min-gt-max.yaml"
  wait_for 30 "InvalidSpec condition" bash -c \
    "kubectl get ipool -o jsonpath='{.items[*].status.conditions[?(@.reason==\"InvalidSpec\")].message}' | grep -q ."
  kubectl get ipool -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,REASON:.status.conditions[?(@.type=="Degraded")].reason,MESSAGE:.status.conditions[?(@.type=="Degraded")].message'
  echo
  kubectl get events --field-selector involvedObject.kind=InferencePool --sort-by=.lastTimestamp | tail -n 8

  if $keep; then
    say "left running; explore with: export KUBECONFIG=$KUBECONFIG; kubectl get ipool,rs,pods"
    echo "stop with: make demo-down"
  else
    say "done (run with KEEP=1 make demo to keep the cluster for exploring)"
  fi
}

case ${1:-up} in
  up) shift || true; cmd_up "$@" ;;
  down) cmd_down ;;
  *) die "usage: demo.sh [up [--keep]|down]" ;;
esac
