#!/usr/bin/env bash
# Compiles the sm_90a kernels (agent/engine/cuda/*_sm90a.cu) with ptxas's report on and fails if
# ptxas serialized any wgmma ("Potential Performance Loss: wgmma.mma_async instructions are
# serialized", C7510-C7519): the kernel would still be correct but lose the overlap of its
# MMAs, and nothing else would say so before a GPU measured it. Register pressure decides this
# (the wgmma prefill kernel sits at its 128-register cap), so an innocent-looking change to a
# shared helper can trigger it. Usage: ptxas_wgmma_check.sh NVCC SOURCE_DIR.
set -euo pipefail
nvcc=$1
src=$2
status=0
for f in "$src"/agent/engine/cuda/*_sm90a.cu; do
  report=$("$nvcc" -DPDPOOL_HAVE_CUDA=1 -I"$src" -O2 -DNDEBUG -std=c++20 --expt-relaxed-constexpr \
    --generate-code=arch=compute_90a,code=sm_90a -x cu -c "$f" -o /dev/null -Xptxas -v 2>&1)
  if grep -q "Potential Performance Loss" <<<"$report"; then
    echo "$f: ptxas serialized wgmma instructions:"
    grep "Potential Performance Loss" <<<"$report"
    status=1
  else
    echo "$f: no wgmma serialized ($(grep -c 'Used [0-9]* registers' <<<"$report") kernels)"
  fi
done
exit $status
