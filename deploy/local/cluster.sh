#!/usr/bin/env bash
# cluster.sh — a real Kubernetes 1.20 control plane on loopback, for tests and the local rack.
#
# No container engine runs on these machines and Debian ships no kube-apiserver binary, so this
# builds kube-apiserver, kube-controller-manager and kube-scheduler 1.20.2 from Debian's own
# source package (the recipe in DESIGN.md, "Kubernetes for tests and the local rack"), caches
# them outside the clone, and runs them with etcd as plain local processes.
#
# Usage:
#   cluster.sh build                      build/cache the three binaries (no-op when cached)
#   cluster.sh up     [--dir DIR]         start (or find running) a cluster; the LAST line of
#                                         stdout is the absolute path of DIR/kubeconfig
#   cluster.sh down   [--dir DIR] [--purge]  stop what `up` started in DIR; --purge also
#                                         deletes DIR/etcd (the cluster's data); certs stay
#   cluster.sh status [--dir DIR]         which components run; exit 0 only if all run and
#                                         the API server is ready
#
# State dir DIR: --dir, else $PDPOOL_LOCAL_DIR, else <repo root>/.local. It holds
#   kubeconfig        admin kubeconfig (token auth, CA embedded)
#   cluster.env       KUBECONFIG, APISERVER_URL, ETCD_URL and the ports, as shell assignments
#   pki/              ca.{crt,key}, apiserver.{crt,key}, sa.{key,pub}, tokens.csv,
#                     admin.{crt,key} (client cert: CN=admin, O=system:masters),
#                     front-proxy-client.{crt,key}
#   etcd/             etcd data          logs/<name>.log   pids/<name>.pid
#
# Environment:
#   PDPOOL_KUBE_ASSETS=DIR   use kube-apiserver, kube-controller-manager, kube-scheduler (and
#                            etcd, if present) from DIR as-is; nothing is built
#   XDG_CACHE_HOME           cache root (default ~/.cache); binaries go to
#                            $XDG_CACHE_HOME/pdpool/kube-1.20.2/
#   PDPOOL_LOCAL_DIR         default state dir
#   PDPOOL_UP_TIMEOUT        seconds `up` waits for the cluster to become ready (default 120)
#   PDPOOL_APISERVER_ARGS, PDPOOL_CONTROLLER_MANAGER_ARGS, PDPOOL_SCHEDULER_ARGS, PDPOOL_ETCD_ARGS
#                            extra flags (whitespace-split) appended to each component
#
# Simulated nodes (pdpool-agent node) and the node lifecycle controller: kube-controller-manager
# runs with its defaults. A node must post a Ready condition and heartbeat (NodeStatus
# lastHeartbeatTime, or its Lease in kube-node-lease) more often than --node-monitor-grace-period
# (default 40s); otherwise the controller marks it Unknown and taints it
# node.kubernetes.io/unreachable (NoSchedule, and NoExecute: pods are evicted after the 300s
# toleration that DefaultTolerationSeconds adds). New nodes start with the
# node.kubernetes.io/not-ready:NoSchedule taint until they report Ready. Related flags:
# --node-monitor-period (5s), --node-startup-grace-period (60s), --pod-eviction-timeout (5m);
# `--controllers=*,-nodelifecycle` disables the controller. Pass such flags through
# PDPOOL_CONTROLLER_MANAGER_ARGS.
#
# Only processes recorded in DIR/pids and whose command line names DIR are ever signalled.
set -euo pipefail

readonly KUBE_VERSION=1.20.2
# Bumped whenever the build recipe changes, so cached binaries of an older recipe are rebuilt.
readonly KUBE_RECIPE=r2
readonly KUBE_BINS=(kube-apiserver kube-controller-manager kube-scheduler)
readonly COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler)
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
readonly SCRIPT_DIR REPO_ROOT
readonly SERVICE_CIDR=10.0.0.0/16
readonly SERVICE_IP=10.0.0.1
readonly SA_ISSUER=https://kubernetes.default.svc

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
}

as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root for: $* (no sudo available)"; fi
}

# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------

assets_dir() {
  if [[ -n ${PDPOOL_KUBE_ASSETS:-} ]]; then echo "$PDPOOL_KUBE_ASSETS"
  else echo "${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/pdpool/kube-$KUBE_VERSION-$KUBE_RECIPE"; fi
}

have_bins() {
  local d=$1 b
  for b in "${KUBE_BINS[@]}"; do [[ -x $d/$b ]] || return 1; done
}

# Prints "URI<TAB>SIGNED-BY" of the Debian mirror the machine already uses for $1 (suite) main.
debian_mirror() {
  local suite=$1 f line
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    line=$(awk -v suite="$suite" '
      function flush() {
        if (!found && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ") &&
            (" " comps " ") ~ / main / && enabled != "no" && uris != "") {
          split(uris, u, " "); print u[1] "\t" (signed ~ /^\// ? signed : ""); found = 1
        }
        types = suites = comps = uris = signed = enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[^ \t]/ {
        key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
        if (key == "types") types = val; else if (key == "suites") suites = val
        else if (key == "components") comps = val; else if (key == "uris") uris = val
        else if (key == "signed-by") signed = val; else if (key == "enabled") enabled = tolower(val)
      }
      END { flush() }' "$f")
    [[ -n $line ]] && { echo "$line"; return 0; }
  done
  # One-line format: deb [signed-by=/path] URI SUITE main ...
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    line=$(awk -v suite="$suite" '
      $1 == "deb" {
        signed = ""; i = 2
        if ($2 ~ /^\[/) {
          for (; i <= NF; i++) { if ($i ~ /^\[?signed-by=/) { s = $i; sub(/^\[?signed-by=/, "", s); sub(/\]$/, "", s); signed = s }
                                 if ($i ~ /\]$/) { i++; break } }
        }
        if ($(i + 1) == suite) for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i "\t" signed; exit }
      }' "$f")
    [[ -n $line ]] && { echo "$line"; return 0; }
  done
  printf '%s\t%s\n' http://deb.debian.org/debian /usr/share/keyrings/debian-archive-keyring.gpg
}

# Runs one build step in a subshell with errexit, output appended to $BUILD_LOG; on failure
# names the step and shows the log's tail.
build_step() {
  local name=$1 rc; shift
  log "build: $name"
  echo "=== $(date -Is) $name" >>"$BUILD_LOG"
  set +e; ( set -e; "$@" ) >>"$BUILD_LOG" 2>&1; rc=$?; set -e
  if [[ $rc -ne 0 ]]; then
    log "build failed at step '$name' (exit $rc); log: $BUILD_LOG; last lines:"
    tail -n 25 "$BUILD_LOG" | sed 's/^/  | /' >&2
    exit 1
  fi
}

step_check_tools() {
  local missing=() t
  for t in go make rsync tar awk sed; do command -v "$t" >/dev/null || missing+=("$t"); done
  [[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]] ||
    missing+=("golang-github-modern-go-reflect2-dev")
  if ((${#missing[@]})); then
    echo "missing: ${missing[*]} — run deploy/local/deps.sh"
    return 1
  fi
  go version
}

step_deb_src() {
  local suite=bookworm src=/etc/apt/sources.list.d/pdpool-src.sources uri signed
  if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q "^Version: .*really$KUBE_VERSION"; then
    IFS=$'\t' read -r uri signed < <(debian_mirror "$suite")
    echo "adding deb-src $uri $suite main (signed-by: ${signed:-default keyring}) as $src"
    {
      echo "# Added by pdpool deploy/local/cluster.sh: Debian sources, to build Kubernetes $KUBE_VERSION."
      echo "Types: deb-src"
      echo "URIs: $uri"
      echo "Suites: $suite"
      echo "Components: main"
      [[ -n $signed ]] && echo "Signed-By: $signed"
    } | as_root tee "$src.tmp" >/dev/null
    as_root mv -f "$src.tmp" "$src"
    as_root apt-get update
  fi
  apt-cache showsrc kubernetes | grep '^Version:'
}

step_download() {
  local ver
  # e.g. 1.20.5+really1.20.2-1.1+deb12u1: Debian's package of upstream 1.20.2.
  ver=$(apt-cache showsrc kubernetes | awk -v want="really$KUBE_VERSION-" \
        '/^Version:/ && index($2, want) {print $2}' | sort -V | tail -n 1)
  [[ -n $ver ]] || { echo "no kubernetes source with version *really$KUBE_VERSION in apt"; return 1; }
  cd "$WORK"
  apt-get source --download-only "kubernetes=$ver"
  ls -l "$WORK"
}

step_unpack() {
  local orig="" f top
  for f in "$WORK"/kubernetes_*.orig.tar.*; do [[ $f == *.asc ]] || { orig=$f; break; }; done
  [[ -f $orig ]] || { echo "no orig tarball in $WORK"; return 1; }
  mkdir -p "$WORK/unpack"
  tar -xf "$orig" -C "$WORK/unpack"
  # The tarball has one top-level directory (kubernetes-1.20.2/ or similar).
  top=$(find "$WORK/unpack" -mindepth 1 -maxdepth 1)
  [[ $(wc -l <<<"$top") -eq 1 && -d $top ]] || top="$WORK/unpack"
  mv "$top" "$WORK/src"
  [[ -f $WORK/src/Makefile && -f $WORK/src/vendor/modules.txt && -d $WORK/src/hack ]] ||
    { echo "unexpected source layout in $orig"; return 1; }
  grep -m1 'modern-go/reflect2' "$WORK/src/vendor/modules.txt"
}

# Go 1.19 crashes the 1.20 API server (fatal error: fault in mapiternext) through the vendored
# github.com/modern-go/reflect2 v1.0.1; Debian's 1.0.2 copy fixes it.
step_reflect2() {
  local v="$WORK/src/vendor/github.com/modern-go/reflect2"
  rm -rf "$v"
  mkdir -p "$v"
  cp -rL /usr/share/gocode/src/github.com/modern-go/reflect2/. "$v/"
  rm -f "$v/go.mod" "$v/go.sum"
  sed -i 's#github.com/modern-go/reflect2 v1\.0\.1#github.com/modern-go/reflect2 v1.0.2#g' \
    "$WORK/src/vendor/modules.txt" "$WORK/src/go.mod"
  grep -q 'github.com/modern-go/reflect2 v1.0.2' "$WORK/src/vendor/modules.txt"
  grep -q 'github.com/modern-go/reflect2 v1.0.2' "$WORK/src/go.mod"
  ! grep -rq 'modern-go/reflect2 v1\.0\.1' "$WORK/src/vendor/modules.txt" "$WORK/src/go.mod"
}

# Built with Go >= 1.16, the vendored go-openapi type validator takes every zero value ("", 0,
# false) for null, so the API server refuses "" in any custom resource field
# (kubernetes/kubernetes#99804). Upstream fixed it by checking only for nil
# (kube-openapi#230, go-openapi/validate#138); apply the same one-line fix.
step_openapi_zero_value() {
  local files f
  files=$(grep -rl 'reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))' \
    "$WORK/src/vendor" || true)
  [[ -n $files ]] || { echo "zero-value check not found in vendor/: recipe out of date"; return 1; }
  for f in $files; do
    echo "patching $f"
    sed -i 's#if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {#if data == nil {#' "$f"
    ! grep -q 'reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))' "$f"
    # The import may now be unused.
    grep -q 'reflect\.' "$f" || sed -i '/^\s*"reflect"$/d' "$f"
  done
}

step_gopath() {
  mkdir -p "$WORK/src/.go/src/k8s.io"
  ln -sfn ../../.. "$WORK/src/.go/src/k8s.io/kubernetes"
  # No .git in the tarball: give the version stamp explicitly, else binaries say v0.0.0-master.
  cat >"$WORK/version.env" <<EOF
KUBE_GIT_VERSION='v$KUBE_VERSION'
KUBE_GIT_MAJOR='${KUBE_VERSION%%.*}'
KUBE_GIT_MINOR='$(cut -d. -f2 <<<"$KUBE_VERSION")'
KUBE_GIT_TREE_STATE='archive'
KUBE_GIT_COMMIT=''
EOF
}

step_make() {
  local start=$SECONDS pid next=30 rc
  log "build: go build (about 5 minutes on 2 cores); output in $BUILD_LOG"
  echo "=== $(date -Is) make" >>"$BUILD_LOG"
  (
    cd "$WORK/src"
    unset GOFLAGS GO111MODULE GOROOT
    export GOPATH="$WORK/src/.go" CGO_ENABLED=0 GOCACHE="$WORK/gocache" \
           KUBE_GIT_VERSION_FILE="$WORK/version.env"
    exec make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler"
  ) >>"$BUILD_LOG" 2>&1 </dev/null &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    if ((SECONDS - start >= next)); then
      log "build: still building… $((SECONDS - start))s"
      next=$((next + 30))
    fi
  done
  set +e; wait "$pid"; rc=$?; set -e
  if [[ $rc -ne 0 ]]; then
    log "build failed at step 'make' (exit $rc) after $((SECONDS - start))s; log: $BUILD_LOG; last lines:"
    tail -n 25 "$BUILD_LOG" | sed 's/^/  | /' >&2
    exit 1
  fi
  log "build: make done in $((SECONDS - start))s"
}

step_install() {
  local b f
  for b in "${KUBE_BINS[@]}"; do
    f="$WORK/src/_output/bin/$b"
    [[ -x $f ]] || f=$(find "$WORK/src/_output" -type f -name "$b" -perm -u+x | head -n 1)
    [[ -n $f && -x $f ]] || { echo "built binary $b not found under _output"; return 1; }
    "$f" --version
    "$f" --version | grep -q "v$KUBE_VERSION"
    install -m 0755 "$f" "$ASSETS/.$b.tmp"
    mv -f "$ASSETS/.$b.tmp" "$ASSETS/$b"
  done
  {
    echo "Kubernetes v$KUBE_VERSION from Debian source package kubernetes, built $(date -Is)"
    echo "with $(go version); vendored modern-go/reflect2 replaced by Debian's 1.0.2;"
    echo "go-openapi zero-value check fixed (kubernetes/kubernetes#99804)"
  } >"$ASSETS/VERSION"
}

cmd_build() {
  ASSETS=$(assets_dir)
  if [[ -n ${PDPOOL_KUBE_ASSETS:-} ]]; then
    have_bins "$ASSETS" ||
      die "PDPOOL_KUBE_ASSETS=$ASSETS must contain executable ${KUBE_BINS[*]}"
    return 0
  fi
  have_bins "$ASSETS" && return 0

  mkdir -p "$ASSETS"
  exec 9>"$ASSETS/.build.lock"
  if ! flock -n 9; then
    log "another build of Kubernetes $KUBE_VERSION is running; waiting for it (lock $ASSETS/.build.lock)"
    flock 9
  fi
  if have_bins "$ASSETS"; then exec 9>&-; return 0; fi

  local start=$SECONDS
  BUILD_LOG="$ASSETS/build.log"
  : >"$BUILD_LOG"
  WORK=$(mktemp -d "$ASSETS/.work.XXXXXX")
  # Remove the work dir (about 2 GB) however the build ends; the log stays.
  trap 'rm -rf "$WORK"' EXIT
  log "building Kubernetes $KUBE_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler) into $ASSETS"
  build_step "check tools" step_check_tools
  build_step "deb-src entry and apt-get update" step_deb_src
  build_step "apt-get source kubernetes" step_download
  build_step "unpack orig tarball" step_unpack
  build_step "swap vendored reflect2 for Debian's 1.0.2" step_reflect2
  build_step "fix go-openapi zero-value check" step_openapi_zero_value
  build_step "GOPATH layout" step_gopath
  step_make
  build_step "install binaries" step_install
  rm -rf "$WORK"
  trap - EXIT
  exec 9>&-
  log "build: done in $((SECONDS - start))s; binaries in $ASSETS"
}

# ---------------------------------------------------------------------------------------------
# cluster state
# ---------------------------------------------------------------------------------------------

DIR=""
PURGE=0
parse_dir_args() {
  local d="${PDPOOL_LOCAL_DIR:-$REPO_ROOT/.local}"
  while (($#)); do
    case $1 in
      --dir) [[ $# -ge 2 ]] || die "--dir needs a value"; d=$2; shift 2 ;;
      --dir=*) d=${1#--dir=}; shift ;;
      --purge) [[ $CMD == down ]] || die "--purge is only for down"; PURGE=1; shift ;;
      -h|--help) usage; exit 0 ;;
      *) die "unknown argument for $CMD: $1 (see cluster.sh --help)" ;;
    esac
  done
  [[ -n $d ]] || die "empty state dir"
  # Canonical (symlinks resolved), so `down` matches what `up` wrote into command lines.
  DIR=$(realpath -m -- "$d")
  PKI="$DIR/pki"
}

lock_dir() {
  exec 8>"$DIR/.lock"
  if ! flock -n 8; then
    log "another cluster.sh is working on $DIR; waiting (up to 300s)"
    flock -w 300 8 || die "timed out waiting for the lock on $DIR/.lock"
  fi
}

# Prints the pid of component $1 if its pid file names a live process that this script started
# for DIR (argv[0] is the component's binary and the command line mentions DIR/).
owned_pid() {
  local f="$DIR/pids/$1.pid" pid cmd argv0
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cmd=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ -n $cmd ]] || return 1                      # gone or a zombie
  argv0=$(head -n 1 <<<"$cmd")
  [[ ${argv0##*/} == "$1" ]] || return 1
  [[ $cmd == *"$DIR/"* ]] || return 1
  echo "$pid"
}

# SIGTERM the given components (if ours), wait up to 10s, then SIGKILL what is left.
stop_components() {
  local name pid pids=() names=() i
  for name in "$@"; do
    if pid=$(owned_pid "$name"); then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); names+=("$name")
    fi
  done
  for ((i = 0; i < 100 && ${#names[@]} > 0; i++)); do
    local left=()
    for name in "${names[@]}"; do owned_pid "$name" >/dev/null && left+=("$name"); done
    names=("${left[@]+"${left[@]}"}")
    ((${#names[@]} == 0)) || sleep 0.1
  done
  for name in "${names[@]+"${names[@]}"}"; do
    if pid=$(owned_pid "$name"); then
      log "$name (pid $pid) did not stop on SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for name in "$@"; do
    for ((i = 0; i < 50; i++)); do owned_pid "$name" >/dev/null || break; sleep 0.1; done
    rm -f "$DIR/pids/$name.pid"
  done
}

stop_all() {
  stop_components kube-scheduler kube-controller-manager kube-apiserver
  stop_components etcd
}

# ---------------------------------------------------------------------------------------------
# certificates, keys, tokens (generated once, kept in DIR/pki)
# ---------------------------------------------------------------------------------------------

gen_pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  local ssl_log="$DIR/logs/openssl.log"
  : >"$ssl_log"
  openssl_() { openssl "$@" >>"$ssl_log" 2>&1 || { tail -n 20 "$ssl_log" >&2; die "openssl $1 failed (log $ssl_log)"; }; }

  if [[ ! -f $PKI/ca.crt || ! -f $PKI/ca.key ]]; then
    log "generating CA"
    cat >"$PKI/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = pdpool-local-ca
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
EOF
    openssl_ genrsa -out "$PKI/ca.key" 2048
    openssl_ req -x509 -new -key "$PKI/ca.key" -config "$PKI/ca.cnf" -days 3650 -out "$PKI/ca.crt"
    rm -f "$PKI/apiserver.crt" "$PKI/admin.crt" "$PKI/front-proxy-client.crt"  # re-issue under the new CA
  fi

  sign() {  # sign NAME SUBJECT EXTENSIONS...
    local name=$1 subj=$2; shift 2
    printf '%s\n' "$@" >"$PKI/$name.ext"
    openssl_ genrsa -out "$PKI/$name.key" 2048
    openssl_ req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr"
    openssl_ x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt"
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
  }
  if [[ ! -f $PKI/apiserver.crt || ! -f $PKI/apiserver.key ]]; then
    log "generating API server serving certificate"
    sign apiserver /CN=kube-apiserver \
      "basicConstraints = critical, CA:FALSE" \
      "keyUsage = critical, digitalSignature, keyEncipherment" \
      "extendedKeyUsage = serverAuth" \
      "subjectAltName = IP:127.0.0.1, DNS:localhost, IP:$SERVICE_IP, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local"
  fi
  if [[ ! -f $PKI/admin.crt || ! -f $PKI/admin.key ]]; then
    log "generating admin client certificate"
    sign admin "/O=system:masters/CN=admin" \
      "basicConstraints = critical, CA:FALSE" \
      "keyUsage = critical, digitalSignature, keyEncipherment" \
      "extendedKeyUsage = clientAuth"
  fi
  # The API server's identity towards aggregated API servers; also fills the requestheader CA
  # in kube-system/extension-apiserver-authentication, which the controller-manager and the
  # scheduler read for their delegated authentication (they log errors when it is missing).
  if [[ ! -f $PKI/front-proxy-client.crt || ! -f $PKI/front-proxy-client.key ]]; then
    log "generating front-proxy client certificate"
    sign front-proxy-client /CN=front-proxy-client \
      "basicConstraints = critical, CA:FALSE" \
      "keyUsage = critical, digitalSignature, keyEncipherment" \
      "extendedKeyUsage = clientAuth"
  fi
  if [[ ! -f $PKI/sa.key || ! -f $PKI/sa.pub ]]; then
    log "generating service-account key pair"
    openssl_ genrsa -out "$PKI/sa.key" 2048
    openssl_ rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
  fi
  if [[ ! -f $PKI/tokens.csv ]]; then
    log "generating admin token"
    (umask 077; echo "$(openssl rand -hex 32),admin,admin,\"system:masters\"" >"$PKI/tokens.csv")
  fi
  TOKEN=$(awk -F, '$2 == "admin" {print $1; exit}' "$PKI/tokens.csv")
  [[ -n $TOKEN ]] || die "no admin token in $PKI/tokens.csv"
  chmod 600 "$PKI"/*.key "$PKI/tokens.csv"
}

# ---------------------------------------------------------------------------------------------
# ports
# ---------------------------------------------------------------------------------------------

# A port is taken if any socket other than a TIME_WAIT one (state 06) has it as local port:
# the Go servers and etcd set SO_REUSEADDR, so leftovers of a stopped cluster don't block them.
port_in_use() {
  local hex
  hex=$(printf ':%04X' "$1")
  awk -v h="$hex" 'FNR > 1 && substr($2, length($2) - 4) == h && $4 != "06" { f = 1 } END { exit !f }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# Random ports below the ephemeral range (32768+), so outgoing connections don't take them.
pick_ports() {
  local reuse=${1:-1} p taken=" " v
  if ((reuse)) && [[ -f $DIR/cluster.env ]]; then
    # Keep the previous ports (and so the same kubeconfig) when they are all still free.
    local ok=1
    unset ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT
    # shellcheck disable=SC1091
    source "$DIR/cluster.env"
    for v in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT; do
      p=${!v:-}
      if [[ ! $p =~ ^[0-9]+$ ]] || port_in_use "$p" || [[ $taken == *" $p "* ]]; then ok=0; break; fi
      taken+="$p "
    done
    ((ok)) && return 0
    taken=" "
  fi
  for v in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT; do
    while :; do
      p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
      [[ $taken == *" $p "* ]] && continue
      port_in_use "$p" && continue
      break
    done
    taken+="$p "
    printf -v "$v" '%s' "$p"
  done
}

write_config() {
  local ca_data tmp
  ca_data=$(base64 -w0 <"$PKI/ca.crt")
  tmp=$(mktemp "$DIR/.kubeconfig.XXXXXX")
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: pdpool-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $ca_data
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: pdpool-local
  context:
    cluster: pdpool-local
    user: admin
    namespace: default
current-context: pdpool-local
EOF
  chmod 600 "$tmp"
  mv -f "$tmp" "$DIR/kubeconfig"
  tmp=$(mktemp "$DIR/.cluster.env.XXXXXX")
  cat >"$tmp" <<EOF
# Written by deploy/local/cluster.sh up; source it from tests.
KUBECONFIG=$DIR/kubeconfig
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT
ETCD_URL=http://127.0.0.1:$ETCD_PORT
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
EOF
  mv -f "$tmp" "$DIR/cluster.env"
}

# ---------------------------------------------------------------------------------------------
# health checks
# ---------------------------------------------------------------------------------------------

api_get() {  # api_get PATH → body on stdout; token passed on stdin, not argv
  printf 'header = "Authorization: Bearer %s"\n' "$TOKEN" |
    curl -fsS --max-time 3 --cacert "$PKI/ca.crt" -K - "https://127.0.0.1:$APISERVER_PORT$1" 2>/dev/null
}
etcd_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }
apiserver_ready() { [[ $(api_get /readyz) == ok ]]; }
token_controller_ready() { api_get /api/v1/namespaces/default/serviceaccounts/default | grep -q '"secrets"'; }
secure_healthz() { [[ $(curl -fsSk --max-time 3 "https://127.0.0.1:$1/healthz" 2>/dev/null) == ok ]]; }
kcm_healthy() { secure_healthz "$KCM_PORT"; }
scheduler_healthy() { secure_healthz "$SCHEDULER_PORT"; }
all_healthy() {
  etcd_healthy && apiserver_ready && kcm_healthy && scheduler_healthy && token_controller_ready
}

# ---------------------------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------------------------

STARTED=()
PORT_CLASH=0

start_component() {  # start_component NAME BINARY ARGS...
  local name=$1 bin=$2 logf="$DIR/logs/$1.log" pid; shift 2
  [[ -f $logf ]] && mv -f "$logf" "$logf.1"
  echo "=== $(date -Is) $bin $*" >"$logf"
  # setsid: detached from the caller's session and terminal; fds 8/9 (our locks) not inherited.
  setsid "$bin" "$@" </dev/null >>"$logf" 2>&1 8>&- 9>&- &
  pid=$!
  echo "$pid" >"$DIR/pids/$name.pid"
  STARTED+=("$name")
  log "started $name (pid $pid, log $logf)"
}

# wait_until DESCRIPTION CHECK: polls CHECK until true; fails if a started component dies or the
# deadline passes.
wait_until() {
  local what=$1 check=$2 name
  while :; do
    "$check" && return 0
    for name in "${STARTED[@]}"; do
      if ! owned_pid "$name" >/dev/null; then
        if grep -qi 'address already in use' "$DIR/logs/$name.log"; then
          log "$name could not bind its port (address already in use); retrying with other ports"
          PORT_CLASH=1
          return 1
        fi
        log "$name exited during start-up; last lines of $DIR/logs/$name.log:"
        tail -n 30 "$DIR/logs/$name.log" | sed 's/^/  | /' >&2
        # Flag errors come before a long usage text: show them apart.
        grep -m 3 -E '^(Error:|F[0-9]{4} |panic:|fatal error:)' "$DIR/logs/$name.log" |
          sed "s/^/cluster.sh: $name: /" >&2 || true
        return 1
      fi
    done
    if ((SECONDS >= DEADLINE)); then
      log "timed out (${UP_TIMEOUT}s) waiting for $what; logs in $DIR/logs/"
      for name in "${STARTED[@]}"; do
        log "last lines of $name.log:"; tail -n 8 "$DIR/logs/$name.log" | sed 's/^/  | /' >&2
      done
      return 1
    fi
    sleep 0.5
  done
}

start_all() {
  local assets etcd_bin
  assets=$(assets_dir)
  if [[ -x $assets/etcd ]]; then etcd_bin=$assets/etcd
  else etcd_bin=$(command -v etcd) || die "etcd not found (install etcd-server: deploy/local/deps.sh)"; fi
  STARTED=()
  PORT_CLASH=0
  mkdir -p "$DIR/etcd" "$DIR/logs" "$DIR/pids" "$PKI/kcm" "$PKI/scheduler" "$PKI/apiserver"
  chmod 700 "$DIR/etcd"

  # shellcheck disable=SC2086
  start_component etcd "$etcd_bin" \
    --name=pdpool --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="pdpool=http://127.0.0.1:$ETCD_PEER_PORT" \
    --quota-backend-bytes=$((1024 * 1024 * 1024)) --snapshot-count=10000 \
    ${PDPOOL_ETCD_ARGS:-}
  wait_until "etcd /health" etcd_healthy || return 1

  # --endpoint-reconciler-type=none: the default reconciler would publish the advertise address
  # 127.0.0.1 as the endpoint of service `kubernetes`, which validation refuses (loopback), and log
  # that every 10s. ClusterIPs do not route here anyway (no kube-proxy).
  # --enable-aggregator-routing: aggregated APIs are reached at endpoint IPs, not ClusterIPs.
  # shellcheck disable=SC2086
  start_component kube-apiserver "$assets/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --cert-dir="$PKI/apiserver" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer="$SA_ISSUER" --api-audiences="$SA_ISSUER" \
    --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
    --requestheader-client-ca-file="$PKI/ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --enable-aggregator-routing=true \
    --endpoint-reconciler-type=none \
    ${PDPOOL_APISERVER_ARGS:-}
  wait_until "kube-apiserver /readyz" apiserver_ready || return 1

  # shellcheck disable=SC2086
  start_component kube-controller-manager "$assets/kube-controller-manager" \
    --kubeconfig="$DIR/kubeconfig" \
    --authentication-kubeconfig="$DIR/kubeconfig" --authorization-kubeconfig="$DIR/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --port=0 --cert-dir="$PKI/kcm" \
    --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --cluster-name=pdpool-local --leader-elect=false \
    ${PDPOOL_CONTROLLER_MANAGER_ARGS:-}
  # shellcheck disable=SC2086
  start_component kube-scheduler "$assets/kube-scheduler" \
    --kubeconfig="$DIR/kubeconfig" \
    --authentication-kubeconfig="$DIR/kubeconfig" --authorization-kubeconfig="$DIR/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --port=0 --cert-dir="$PKI/scheduler" \
    --leader-elect=false \
    ${PDPOOL_SCHEDULER_ARGS:-}
  wait_until "kube-controller-manager /healthz" kcm_healthy || return 1
  wait_until "kube-scheduler /healthz" scheduler_healthy || return 1
  wait_until "the default service account and its token (token controller)" token_controller_ready || return 1
}

cmd_up() {
  parse_dir_args "$@"
  UP_TIMEOUT=${PDPOOL_UP_TIMEOUT:-120}
  [[ $UP_TIMEOUT =~ ^[0-9]+$ ]] || die "PDPOOL_UP_TIMEOUT must be a number of seconds"
  cmd_build
  mkdir -p "$DIR/logs" "$DIR/pids"
  DIR=$(realpath -- "$DIR")
  PKI="$DIR/pki"
  lock_dir
  gen_pki

  local name running=0 start=$SECONDS attempt
  for name in "${COMPONENTS[@]}"; do owned_pid "$name" >/dev/null && running=$((running + 1)); done
  if ((running == ${#COMPONENTS[@]})) && [[ -f $DIR/cluster.env ]]; then
    # shellcheck disable=SC1091
    source "$DIR/cluster.env"
    local i
    for ((i = 0; i < 20; i++)); do
      if all_healthy; then
        write_config
        log "cluster in $DIR is already up (API server https://127.0.0.1:$APISERVER_PORT)"
        echo "$DIR/kubeconfig"
        return 0
      fi
      sleep 1
    done
    log "cluster in $DIR runs but is not healthy; restarting it"
  elif ((running > 0)); then
    log "cluster in $DIR is partly running; restarting it"
  fi
  stop_all

  DEADLINE=$((SECONDS + UP_TIMEOUT))
  for attempt in 1 2 3; do
    pick_ports $((attempt == 1))
    write_config
    log "starting control plane in $DIR (etcd :$ETCD_PORT, apiserver :$APISERVER_PORT," \
        "controller-manager :$KCM_PORT, scheduler :$SCHEDULER_PORT)"
    if start_all; then
      log "cluster ready in $((SECONDS - start))s: KUBECONFIG=$DIR/kubeconfig"
      echo "$DIR/kubeconfig"
      return 0
    fi
    stop_all
    ((PORT_CLASH)) || break
    DEADLINE=$((SECONDS + UP_TIMEOUT))
  done
  die "cluster in $DIR did not come up (logs in $DIR/logs/)"
}

cmd_down() {
  parse_dir_args "$@"
  if [[ ! -d $DIR/pids ]]; then
    log "no cluster state in $DIR; nothing to stop"
    return 0
  fi
  lock_dir
  stop_all
  if ((PURGE)); then
    log "removing etcd data $DIR/etcd"
    rm -rf "$DIR/etcd"
  fi
  log "cluster in $DIR is down"
}

cmd_status() {
  parse_dir_args "$@"
  local name pid all=0
  echo "state dir: $DIR"
  for name in "${COMPONENTS[@]}"; do
    if pid=$(owned_pid "$name"); then echo "$name: running (pid $pid)"
    else echo "$name: stopped"; all=1; fi
  done
  if ((all == 0)) && [[ -f $DIR/cluster.env && -f $PKI/tokens.csv ]]; then
    # shellcheck disable=SC1091
    source "$DIR/cluster.env"
    TOKEN=$(awk -F, '$2 == "admin" {print $1; exit}' "$PKI/tokens.csv")
    if apiserver_ready; then echo "api server: ready at https://127.0.0.1:$APISERVER_PORT"
    else echo "api server: not ready"; all=1; fi
    echo "kubeconfig: $DIR/kubeconfig"
  fi
  return "$all"
}

CMD=${1:-}
(($#)) && shift
case $CMD in
  build) (($# == 0)) || die "build takes no arguments"; cmd_build; log "binaries in $(assets_dir)" ;;
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  status) cmd_status "$@" ;;
  -h|--help|help) usage ;;
  *) die "unknown command '${CMD}' (expected build, up, down or status)" ;;
esac
