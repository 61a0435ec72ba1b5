#!/usr/bin/env bash
# Prepares the one device call of issue 4 (bench/README.md, "GPU benchmarks (issue 4)"): builds
# the GPU binaries HERE (nvcc, no GPU needed) and gathers into .device/ what the lent GPU machine
# needs, since that machine has no Debian -dev libraries, no network and no ../shared:
#   .device/bin/       engine_bench, sampling_bench, pdpool_gpu_tests, kv_handoff_bench (when
#                      the build has it),
#                      debug info stripped (the device call carries at most 64 MiB)
#   .device/lib/       the shared libraries they load that are neither glibc's, the C++
#                      runtime's, the driver's nor CUDA's (ldd decides; usually none: pdpool's
#                      third-party libraries link statically or are not needed at run time)
#   .device/lib-fallback/  libstdc++ and libgcc_s from here. The device image (Ubuntu 24.04) has
#                      newer ones, which serve binaries built against Debian 12's; the run
#                      script adds this folder only if ldd there reports a missing version.
#   .device/peer_hf_llama.py   ../shared/bench/peer_hf_llama.py (../shared does not travel)
# CUDA's own libraries (cuBLAS, NCCL) are not carried: /usr/local/cuda/lib64 and torch's nvidia
# packages have them there (bench/gpu/run_on_device.sh finds them).
# .device/ is listed in .git/info/exclude so that it travels only through `carry`.
#
# Usage: bench/gpu/prepare_device_bundle.sh   (BUILD_DIR=build, JOBS=nproc by default: the
# build `make build` made)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
BUNDLE=.device

if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
    -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache
fi
all_targets=$(ninja -C "$BUILD_DIR" -t targets all)
targets="engine_bench sampling_bench pdpool_gpu_tests"
if grep -q '^kv_handoff_bench:' <<<"$all_targets"; then
  targets="$targets kv_handoff_bench"
fi
for t in engine_bench sampling_bench pdpool_gpu_tests; do
  if ! grep -q "^$t:" <<<"$all_targets"; then
    echo "prepare_device_bundle: no target $t in $BUILD_DIR (was CUDA found? see the cmake" \
      "output: 'pdpool: cuda backend ON')" >&2
    exit 1
  fi
done
# shellcheck disable=SC2086
ninja -C "$BUILD_DIR" -j"$JOBS" $targets

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/lib" "$BUNDLE/lib-fallback"
for t in $targets; do
  objcopy --strip-debug "$BUILD_DIR/$t" "$BUNDLE/bin/$t"
done

carried=()
while read -r name path; do
  case "$name" in
    linux-vdso.so* | ld-linux* | libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | \
      libresolv.so* | libutil.so*) ;;  # glibc: the device's is newer
    libstdc++.so* | libgcc_s.so*) cp -L "$path" "$BUNDLE/lib-fallback/" ;;
    libcuda.so* | libnvidia-*) ;;  # the driver's
    libcublas* | libcudart* | libnccl* | libnvrtc* | libnvJitLink* | libcurand* | libcusparse* | \
      libcufft* | libcusolver*) ;;  # CUDA's: on the device
    *) cp -L "$path" "$BUNDLE/lib/" && carried+=("$name") ;;
  esac
done < <(for b in "$BUNDLE"/bin/*; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u)

peer=""
for candidate in ../shared/bench/peer_hf_llama.py /work/shared/bench/peer_hf_llama.py; do
  if [ -f "$candidate" ]; then peer=$candidate; break; fi
done
if [ -z "$peer" ]; then
  echo "prepare_device_bundle: ../shared/bench/peer_hf_llama.py not found" >&2
  exit 1
fi
cp "$peer" "$BUNDLE/peer_hf_llama.py"
chmod u+w "$BUNDLE/peer_hf_llama.py"

exclude=.git/info/exclude
mkdir -p .git/info
grep -qxF '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >>"$exclude"

bundle_bytes=$(du -sb "$BUNDLE" | cut -f1)
# What travels besides: tracked and untracked-not-ignored files (deleted ones are skipped).
tree_bytes=$( (git ls-files -co --exclude-standard -z | xargs -0 -r stat -c %s 2>/dev/null || true) |
  awk '{ s += $1 } END { print s + 0 }')
total=$((bundle_bytes + tree_bytes))
echo "prepare_device_bundle: $BUNDLE: $(ls "$BUNDLE/bin" | tr '\n' ' ')"
echo "  shared libraries carried: ${carried[*]:-none}; fallback: $(ls "$BUNDLE/lib-fallback" | tr '\n' ' ')"
echo "  bundle $((bundle_bytes / 1048576)) MiB + working tree $((tree_bytes / 1048576)) MiB =" \
  "$((total / 1048576)) MiB (the device call carries at most 64 MiB)"
if [ "$total" -ge $((64 * 1048576)) ]; then
  echo "prepare_device_bundle: too large for one device call" >&2
  exit 1
fi
echo "  next: the device tool's run with command 'bash bench/gpu/run_on_device.sh'," \
  "carry [\".device\"], timeout_s 570 (bench/README.md)"
