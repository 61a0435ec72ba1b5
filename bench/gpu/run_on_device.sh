#!/usr/bin/env bash
# The one script for a lent GPU machine (issue 4; bench/README.md "GPU benchmarks (issue 4)").
# Runs there from the repository root, with .device/ carried (bench/gpu/prepare_device_bundle.sh
# built it here; the machine has nvcc, CUDA's libraries, torch and transformers, but no Debian
# -dev libraries and no network). In order, each step under its own time limit and all of them
# within BUDGET seconds, so that one hang cannot eat the lease:
#   1. the machine: nvidia-smi, library resolution (LD_LIBRARY_PATH: CUDA's lib64, NCCL from
#      torch's nvidia.nccl package, .device/lib; .device/lib-fallback only if ldd asks for it);
#   2. tests/gpu/hf_reference.py: a small random Llama checkpoint and HF's float64 logits;
#   3. pdpool_gpu_tests (label gpu: the cuda backend, the GPU KV transports, and the HF
#      comparison with PDPOOL_HF_REFERENCE_DIR set), gtest XML to $OUT/gpu_tests.xml;
#   4. the peer: .device/peer_hf_llama.py on engine_bench's whole decode grid;
#   5. engine_bench with the peer's JSON (table + JSON);
#   6. kv_handoff_bench, when the bundle has it;
#   7. with time left, the token sampler: bench/gpu/peer_torch_sampling.py (transformers'
#      sampling on torch), then sampling_bench against it;
#   8. with time left, engine_bench's decode batch 1 and prefill 8192 on the previous kernels
#      (cuBLAS decode GEMMs, mma.sync prefill attention, no programmatic dependent launch).
# Everything lands in $OUT (run.log with every step's full output, gpu_tests.xml, peer_hf.json,
# engine_bench.json, kv_handoff.json when it writes one, engine_bench_baseline.json, summary.txt:
# within the 8 files a call brings back; the sampler's table is in run.log and summary.txt), and
# a short summary table is printed last. Exit 0 when the script ran to its end, whatever the
# steps' results (they are in the summary); 1 without the bundle.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-/tmp/pdpool-device-out}
BUNDLE=${BUNDLE:-.device}
BUDGET=${BUDGET:-520}
HF_REF_DIR=${HF_REF_DIR:-/tmp/pdpool-hf-reference}
mkdir -p "$OUT"
START=$(date +%s)
export PYTHONUNBUFFERED=1

declare -A RESULT SECONDS_USED
STEPS=()

elapsed() { echo $(($(date +%s) - START)); }

# run_step NAME CAP RESERVE CMD...: runs CMD under `timeout`, at most CAP seconds and never into
# the RESERVE seconds kept for the steps after it; records its result.
run_step() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  STEPS+=("$name")
  local left=$((BUDGET - $(elapsed) - reserve))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 15 ]; then
    RESULT[$name]="skipped: no time left"
    SECONDS_USED[$name]=0
    echo "==== $name: skipped, no time left ($(elapsed) s of $BUDGET used)"
    return 0
  fi
  echo
  echo "==== $name (limit ${limit} s; $(elapsed) s of $BUDGET used) ===="
  local t0 rc
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@"
  rc=$?
  SECONDS_USED[$name]=$(($(date +%s) - t0))
  case $rc in
    0) RESULT[$name]="ok" ;;
    124 | 137) RESULT[$name]="TIMEOUT after ${limit} s" ;;
    *) RESULT[$name]="FAILED (exit $rc)" ;;
  esac
  echo "==== $name: ${RESULT[$name]} in ${SECONDS_USED[$name]} s"
}

skip_step() {
  STEPS+=("$1")
  RESULT[$1]="skipped: $2"
  SECONDS_USED[$1]=0
  echo "==== $1: skipped: $2"
}

main() {
# ---- 1. the machine ----
echo "==== machine: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -r), $(nproc) CPUs"
timeout 20 nvidia-smi || echo "nvidia-smi failed"
timeout 20 nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw,power.limit --format=csv || true
PY=$(command -v python3)
echo "python3: $PY ($($PY --version 2>&1))"
timeout 60 "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" || echo "torch/transformers: not importable"

if [ ! -d "$BUNDLE/bin" ]; then
  echo "run_on_device: $BUNDLE/bin missing: run bench/gpu/prepare_device_bundle.sh here and carry .device" >&2
  return 1
fi
BUNDLE=$(cd "$BUNDLE" && pwd)
LIBS="$BUNDLE/lib"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LIBS="$LIBS:$d"
done
NCCL_DIR=$(timeout 60 "$PY" -c "import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])" 2>/dev/null || true)
[ -n "$NCCL_DIR" ] && [ -d "$NCCL_DIR/lib" ] && LIBS="$LIBS:$NCCL_DIR/lib"
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Anything still missing: look for it in the python environment's nvidia packages.
SITE=$("$PY" -c "import site; print(site.getsitepackages()[0])" 2>/dev/null || true)
for b in "$BUNDLE"/bin/*; do
  for lib in $(ldd "$b" 2>/dev/null | awk '/not found/ {print $1}'); do
    found=$(find "$SITE/nvidia" /usr/local/cuda* -name "$lib" 2>/dev/null | head -1)
    if [ -n "$found" ]; then
      LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$found")"
      echo "library $lib: $(dirname "$found")"
    fi
  done
done
# cuBLAS and NCCL are dlopen'ed (ldd does not list them): make sure the loader finds them.
for lib in libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
  on_path=""
  for d in ${LD_LIBRARY_PATH//:/ }; do [ -e "$d/$lib" ] && on_path=1 && break; done
  [ -n "$on_path" ] && continue
  ldconfig -p 2>/dev/null | grep -q "$lib" && continue
  found=$(find "$SITE/nvidia" /usr/local/cuda* -name "$lib" 2>/dev/null | head -1)
  if [ -n "$found" ]; then
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$found")"
    echo "library $lib (loaded at run time): $(dirname "$found")"
  else
    echo "library $lib (loaded at run time): not found; its tests will fail naming it"
  fi
done
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
if ldd "$BUNDLE"/bin/* 2>&1 | grep -q "version .GLIBCXX\|version .GCC\|version .CXXABI"; then
  export LD_LIBRARY_PATH="$BUNDLE/lib-fallback:$LD_LIBRARY_PATH"
  echo "the C++ runtime here is older than the build machine's: using $BUNDLE/lib-fallback"
fi
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if ldd "$BUNDLE"/bin/* 2>&1 | grep -E "not found"; then
  echo "run_on_device: some libraries are still missing (above)"
fi

# ---- 2.-3. correctness ----
run_step hf_reference 150 330 "$PY" tests/gpu/hf_reference.py --out "$HF_REF_DIR"
if [ "${RESULT[hf_reference]}" = ok ]; then
  export PDPOOL_HF_REFERENCE_DIR="$HF_REF_DIR"
fi
run_step gpu_tests 180 300 "$BUNDLE/bin/pdpool_gpu_tests" --gtest_output="xml:$OUT/gpu_tests.xml"
unset PDPOOL_HF_REFERENCE_DIR

# ---- 4.-5. the peer, then pdpool's engine ----
run_step peer_hf 200 180 "$PY" "$BUNDLE/peer_hf_llama.py" --preset llama-3.1-8b \
  --json "$OUT/peer_hf.json" \
  --decode 1:1024,8:1024,32:1024,64:1024,1:2048,8:2048,32:2048,64:2048 \
  --prefill 512,2048,8192
PEER_ARGS=()
[ -s "$OUT/peer_hf.json" ] && PEER_ARGS=(--peer-json "$OUT/peer_hf.json")
engine_cap=$((BUDGET - $(elapsed) - 40))
[ "$engine_cap" -gt 240 ] && engine_cap=240
run_step engine_bench "$engine_cap" 30 "$BUNDLE/bin/engine_bench" --preset llama-3.1-8b \
  --weights dummy:1 --json "$OUT/engine_bench.json" "${PEER_ARGS[@]}" \
  --max-seconds $((engine_cap > 90 ? engine_cap - 60 : 30))
if [ -s "$OUT/engine_bench.json" ] && [ "${RESULT[engine_bench]}" != ok ]; then
  echo "(engine_bench did not finish; $OUT/engine_bench.json holds the rows it measured)"
fi

# ---- 6. KV handoff ----
if [ -x "$BUNDLE/bin/kv_handoff_bench" ]; then
  KV_ARGS=()
  if timeout 10 "$BUNDLE/bin/kv_handoff_bench" --help 2>&1 | grep -q -- "--json"; then
    KV_ARGS=(--json "$OUT/kv_handoff.json")
  fi
  run_step kv_handoff 90 5 "$BUNDLE/bin/kv_handoff_bench" "${KV_ARGS[@]}"
else
  skip_step kv_handoff "no kv_handoff_bench in the bundle"
fi

# ---- 7. the token sampler against transformers' sampling on torch (only with time left) ----
# After the targets' steps, which keep their reserves. Its JSON stays out of $OUT (a call brings
# back 8 files); the summary prints its table.
SAMPLING_JSON=/tmp/pdpool-sampling-bench.json
rm -f "$SAMPLING_JSON" /tmp/pdpool-peer-sampling.json
run_step peer_sampling 45 15 "$PY" bench/gpu/peer_torch_sampling.py \
  --json /tmp/pdpool-peer-sampling.json
SAMPLING_PEER=()
[ -s /tmp/pdpool-peer-sampling.json ] && SAMPLING_PEER=(--peer-json /tmp/pdpool-peer-sampling.json)
run_step sampling_bench 30 0 "$BUNDLE/bin/sampling_bench" "${SAMPLING_PEER[@]}" \
  --json "$SAMPLING_JSON"

# ---- 8. the previous kernels, for comparison (only with time left) ----
# Decode batch 1 and prefill 8192 with cuBLAS for the decode GEMMs, the mma.sync prefill
# attention and no programmatic dependent launch: what the rows above gain from each.
if [ "${RESULT[engine_bench]}" = ok ]; then
  run_step engine_baseline 60 0 env PDPOOL_CUDA_PDL=0 "$BUNDLE/bin/engine_bench" \
    --preset llama-3.1-8b --weights dummy:1 --rows decode:1:1024,prefill:8192 \
    --decode-gemm cublas --prefill-attention mma --json "$OUT/engine_bench_baseline.json"
else
  skip_step engine_baseline "engine_bench did not finish"
fi

# ---- summary ----
timeout 20 nvidia-smi --query-gpu=name,memory.used,clocks.sm,temperature.gpu,power.draw --format=csv,noheader || true
tests_line=""
if [ -s "$OUT/gpu_tests.xml" ]; then
  tests_line=$("$PY" - "$OUT/gpu_tests.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
cases = root.findall(".//testcase")
failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
skipped = [c for c in cases if c.find("skipped") is not None or c.get("result") == "skipped"]
names = ", ".join(f"{c.get('classname')}.{c.get('name')}" for c in failed[:6])
print(f"{len(cases) - len(failed) - len(skipped)} passed, {len(failed)} failed, "
      f"{len(skipped)} skipped" + (f"; failed: {names}" if names else ""))
EOF
  )
fi
{
  echo
  for f in engine_bench engine_bench_baseline; do
    [ -s "$OUT/$f.json" ] || continue
    echo "-- $f.json"
    "$PY" - "$OUT/$f.json" <<'EOF'
import json, sys
rep = json.load(open(sys.argv[1]))
if rep.get("skipped"):
    print("engine_bench: skipped:", rep["skipped"])
    sys.exit()
c = rep.get("ceilings", {})
print(f"engine_bench on {rep.get('device_name')}: copy {c.get('copy_bytes_per_s', 0) / 1e12:.2f} TB/s, "
      f"GEMM {c.get('gemm_flops_per_s', 0) / 1e12:.0f} TFLOP/s")
print(f"{'case':16} {'ms':>9} {'floor':>8} {'of floor':>9} {'target':>7} {'result':>7} {'peer ms':>9} {'pd/peer':>8} {'sim ms':>8}")
for r in rep.get("rows", []):
    f = lambda v, fmt: (fmt % v) if v is not None else "-"
    tgt = f(r.get("target_fraction") and 100 * r["target_fraction"], ">=%.0f%%")
    met = {True: "met", False: "missed", None: "-"}[r.get("target_met")]
    print(f"{r['name']:16} {f(r.get('ms'), '%.2f'):>9} {r['floor_ms']:>8.2f} "
          f"{f(r.get('floor_fraction') and 100 * r['floor_fraction'], '%.1f%%'):>9} {tgt:>7} {met:>7} "
          f"{f(r.get('peer_ms'), '%.2f'):>9} {f(r.get('ratio_vs_peer'), '%.3f'):>8} {f(r.get('sim_ms'), '%.2f'):>8}"
          + (f"  [{r['error'][:60]}]" if r.get("error") else ""))
EOF
  done
  if grep -q "chosen by measurement\|disagrees" "$OUT/run.log" 2>/dev/null; then
    echo "-- kernels chosen at load (engine_bench's log; first of each)"
    grep -h "prefill attention chosen by measurement\|disagrees" "$OUT/run.log" | head -2
    grep -h "decode GEMMs chosen by measurement" "$OUT/run.log" | head -4
  fi
  if [ -s "$SAMPLING_JSON" ]; then
    echo "-- sampling_bench (vs transformers' sampling on torch)"
    "$PY" - "$SAMPLING_JSON" <<'EOF'
import json, sys
rep = json.load(open(sys.argv[1]))
print(f"sampling_bench on {rep['device_name']}, vocabulary {rep['vocab']}")
print(f"{'case':18} {'rows':>5} {'pdpool us':>10} {'peer us':>9} {'peer/pdpool':>12}")
for r in rep["rows"]:
    peer = r.get("peer_us")
    print(f"{r['case']:18} {r['rows']:>5} {r['us']:>10.1f} {'-' if peer is None else '%.1f' % peer:>9} "
          f"{'-' if peer is None else '%.2fx' % r['peer_over_pdpool']:>12}")
EOF
  fi
  echo
  echo "==== summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(elapsed) s of $BUDGET) ===="
  printf '%-14s %-8s %s\n' step seconds result
  for s in "${STEPS[@]}"; do
    extra=""
    [ "$s" = gpu_tests ] && [ -n "$tests_line" ] && extra=" — $tests_line"
    printf '%-14s %-8s %s\n' "$s" "${SECONDS_USED[$s]}" "${RESULT[$s]}$extra"
  done
  echo "files: $(cd "$OUT" && ls | tr '\n' ' ')"
} | tee "$OUT/summary.txt"
}

main 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
