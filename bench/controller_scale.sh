#!/usr/bin/env bash
# controller_scale.sh — what `make bench` runs: the controller scale benchmark
# (bench/controller_scale.cc, targets in TARGETS.md "Controller") on a dedicated local
# Kubernetes control plane. Builds what is missing, brings the cluster up in build/bench-cluster,
# runs the scenarios, and always stops what it started (controller, simulated nodes, the
# cluster) — on success, failure, Ctrl-C or SIGTERM.
#
# Scenarios, each on a freshly purged cluster so one's garbage does not load the next:
#   controller  500 pools with 0 workers (minReplicas 0) and no router pods: only the
#               controller's own work (children, status, events) is measured.
#   workers     500 pools with 1 prefill + 1 decode worker each on simulated GPU nodes
#               (pdpool-agent node), topology Required; also waits until every pool is Ready.
#
# Usage: bench/controller_scale.sh [options] [-- extra controller_scale flags]
#   --pools N            pools per scenario (default 500)
#   --worker-pools N     pools in the workers scenario (default: --pools)
#   --scenarios LIST     comma-separated: controller,workers (default both)
#   --json PATH          write all scenarios' results as one JSON document
#                        (default build/bench/controller_scale.json)
#   --keep-cluster       leave the cluster running at the end (for poking at it)
# Environment: BUILD_DIR (default <repo>/build), PDPOOL_BENCH_CLUSTER_DIR (default
# $BUILD_DIR/bench-cluster).
# Exit status: 0 when the benchmark ran (missed targets show as FAIL rows, they do not gate),
# non-zero when it could not run; 130 on interrupt.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$REPO_ROOT/build}"
CLUSTER_DIR="${PDPOOL_BENCH_CLUSTER_DIR:-$BUILD_DIR/bench-cluster}"
CLUSTER_SH="$REPO_ROOT/deploy/local/cluster.sh"

POOLS=500
WORKER_POOLS=""
SCENARIOS="controller,workers"
JSON_OUT="$BUILD_DIR/bench/controller_scale.json"
KEEP_CLUSTER=0
EXTRA=()

log() { echo "controller_scale.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2; }

while (($#)); do
  case $1 in
    --pools) POOLS=${2:?--pools needs a value}; shift 2 ;;
    --worker-pools) WORKER_POOLS=${2:?--worker-pools needs a value}; shift 2 ;;
    --scenarios) SCENARIOS=${2:?--scenarios needs a value}; shift 2 ;;
    --json) JSON_OUT=${2:?--json needs a value}; shift 2 ;;
    --keep-cluster) KEEP_CLUSTER=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ $POOLS =~ ^[0-9]+$ && $POOLS -gt 0 ]] || die "--pools must be a positive integer"
WORKER_POOLS=${WORKER_POOLS:-$POOLS}
[[ $WORKER_POOLS =~ ^[0-9]+$ && $WORKER_POOLS -gt 0 ]] || die "--worker-pools must be a positive integer"
for s in ${SCENARIOS//,/ }; do
  [[ $s == controller || $s == workers ]] || die "unknown scenario '$s' (controller, workers)"
done

# ---------------------------------------------------------------------------------------------
# Cleanup: whatever happens, stop our children and the cluster.
# ---------------------------------------------------------------------------------------------
BENCH_PID=""
AGENT_PID=""
CLUSTER_STARTED=0
CLEANED=0

stop_pid() {  # stop_pid PID NAME: SIGTERM, up to 15 s, then SIGKILL; only our own children
  local pid=$1 name=$2 i
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  ((CLEANED)) && return 0
  CLEANED=1
  trap '' INT TERM  # a second Ctrl-C must not cut the teardown short
  stop_pid "$BENCH_PID" controller_scale
  BENCH_PID=""
  stop_pid "$AGENT_PID" "simulated nodes"
  AGENT_PID=""
  if ((CLUSTER_STARTED)) && ((!KEEP_CLUSTER)); then
    "$CLUSTER_SH" down --dir "$CLUSTER_DIR" --purge >&2 || log "warning: cluster down failed"
  elif ((CLUSTER_STARTED)); then
    log "cluster left running (--keep-cluster): $CLUSTER_SH down --dir $CLUSTER_DIR --purge"
  fi
}
on_signal() {
  log "interrupted; cleaning up"
  cleanup
  exit 130
}
trap cleanup EXIT
trap on_signal INT TERM

# Runs a command in the background and waits for it, so that a signal to this script is handled
# at once (bash defers traps while a foreground child runs). Sets RC.
run_waited() {
  "$@" &
  BENCH_PID=$!
  set +e
  wait "$BENCH_PID"
  RC=$?
  set -e
  BENCH_PID=""
}

# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
if [[ ! -f $BUILD_DIR/build.ninja && ! -f $BUILD_DIR/Makefile ]]; then
  log "configuring $BUILD_DIR"
  cmake -S "$REPO_ROOT" -B "$BUILD_DIR" -G Ninja >&2
fi
log "building controller_scale, pdpool-controller, pdpool-agent"
cmake --build "$BUILD_DIR" -j "$(nproc)" --target controller_scale pdpool-controller pdpool-agent >&2
mkdir -p "$(dirname "$JSON_OUT")" "$CLUSTER_DIR/bin"
# Run private copies: other people's builds in the same build dir relink these binaries, and a
# binary being relinked cannot be executed.
for b in controller_scale pdpool-controller pdpool-agent; do
  for ((i = 0; ; i++)); do
    cp -f "$BUILD_DIR/$b" "$CLUSTER_DIR/bin/$b.tmp" && mv -f "$CLUSTER_DIR/bin/$b.tmp" "$CLUSTER_DIR/bin/$b" &&
      "$CLUSTER_DIR/bin/$b" --help >/dev/null 2>&1 && break
    ((i < 10)) || die "cannot copy a working $BUILD_DIR/$b"
    sleep 2
  done
done
BIN_DIR="$CLUSTER_DIR/bin"

# ---------------------------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------------------------
KUBECONFIG_PATH=""
cluster_up() {
  log "bringing up a fresh cluster in $CLUSTER_DIR (the first time this may wait for the Kubernetes build)"
  CLUSTER_STARTED=1
  "$CLUSTER_SH" down --dir "$CLUSTER_DIR" --purge >&2 || true
  local out
  run_waited_capture out "$CLUSTER_SH" up --dir "$CLUSTER_DIR"
  KUBECONFIG_PATH=$(tail -n 1 <<<"$out")
  [[ -f $KUBECONFIG_PATH ]] || die "cluster.sh up printed no kubeconfig (got '$KUBECONFIG_PATH')"
  kubectl --kubeconfig "$KUBECONFIG_PATH" apply -f "$REPO_ROOT/crds/inferencepools.pdpool.dev.yaml" >&2
  kubectl --kubeconfig "$KUBECONFIG_PATH" wait --for condition=established --timeout=60s \
    crd/inferencepools.pdpool.dev >&2
}

# run_waited_capture VAR CMD...: like run_waited, stdout into VAR; fails the script on error.
run_waited_capture() {
  local var=$1 tmp; shift
  tmp=$(mktemp "$CLUSTER_DIR/.out.XXXXXX")
  "$@" >"$tmp" &
  BENCH_PID=$!
  set +e
  wait "$BENCH_PID"
  RC=$?
  set -e
  BENCH_PID=""
  printf -v "$var" '%s' "$(cat "$tmp")"
  rm -f "$tmp"
  ((RC == 0)) || die "$* failed (exit $RC)"
}

cluster_down() {
  "$CLUSTER_SH" down --dir "$CLUSTER_DIR" --purge >&2 || log "warning: cluster down failed"
  CLUSTER_STARTED=0
}

# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------
RESULTS=()
FAILED=0
BIN="$BIN_DIR/controller_scale"

for scenario in ${SCENARIOS//,/ }; do
  cluster_up
  json="$CLUSTER_DIR/result-$scenario.json"
  rm -f "$json"
  args=(--kubeconfig "$KUBECONFIG_PATH" --cluster-dir "$CLUSTER_DIR" --json "$json" --keep-namespace
        --controller-binary "$BIN_DIR/pdpool-controller"
        --controller-log "$CLUSTER_DIR/logs/controller-$scenario.log")
  case $scenario in
    controller)
      args+=(--scenario "controller only: $POOLS pools, 0 workers, no router pods"
             --pools "$POOLS" --worker-replicas 0 --router-replicas 0 --topology-policy None)
      ;;
    workers)
      # 1 prefill + 1 decode GPU per pool, +1 prefill per patched pool (the spec-change phase),
      # and a quarter spare so that placement never runs short; 8 GPUs per node.
      gpus=$((WORKER_POOLS * 2 + WORKER_POOLS / 5 + 1))
      gpus=$((gpus + gpus / 4))
      nodes=$(((gpus + 7) / 8))
      ((nodes <= 256)) || die "--worker-pools $WORKER_POOLS needs $nodes simulated nodes (> 256)"
      log "starting $nodes simulated nodes with 8 GPUs each (NVLink domain bench-nvl)"
      "$BIN_DIR/pdpool-agent" node --kubeconfig "$KUBECONFIG_PATH" --name bench-node \
        --count "$nodes" --gpus 8 --clique bench-nvl >"$CLUSTER_DIR/logs/agent-nodes.log" 2>&1 &
      AGENT_PID=$!
      for ((i = 0; ; i++)); do
        ready=$(kubectl --kubeconfig "$KUBECONFIG_PATH" get nodes --no-headers 2>/dev/null |
                awk '$2 == "Ready"' | wc -l)
        ((ready >= nodes)) && break
        kill -0 "$AGENT_PID" 2>/dev/null || die "simulated nodes exited; see $CLUSTER_DIR/logs/agent-nodes.log"
        ((i < 240)) || die "only $ready/$nodes simulated nodes Ready after 120 s"
        sleep 0.5
      done
      log "$nodes nodes Ready"
      args+=(--scenario "workers: $WORKER_POOLS pools, 1 prefill + 1 decode worker each on $nodes simulated nodes"
             --pools "$WORKER_POOLS" --worker-replicas 1 --router-replicas 0 --topology-policy Required
             --topology-key nvidia.com/gpu.clique --wait-ready --track-pid "node-agent=$AGENT_PID")
      ;;
  esac
  log "scenario $scenario: $BIN ${args[*]} ${EXTRA[*]:-}"
  run_waited "$BIN" "${args[@]}" "${EXTRA[@]+"${EXTRA[@]}"}"
  if ((RC == 130)); then on_signal; fi
  if ((RC != 0)); then
    log "scenario $scenario could not run (exit $RC); controller log: $CLUSTER_DIR/logs/controller-$scenario.log"
    FAILED=1
  elif [[ -f $json ]]; then
    RESULTS+=("$json")
  fi
  stop_pid "$AGENT_PID" "simulated nodes"
  AGENT_PID=""
  if ((!KEEP_CLUSTER)); then cluster_down; fi
done

if ((${#RESULTS[@]})); then
  jq -s '{benchmark: "controller_scale", scenarios: .}' "${RESULTS[@]}" >"$JSON_OUT"
  log "results: $JSON_OUT"
fi
exit "$FAILED"
