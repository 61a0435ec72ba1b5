#!/usr/bin/env bash
# sync_crds.sh — keeps the Helm chart's copy of the CRDs (charts/pdpool/crds/) identical to
# crds/, their source of truth. Helm installs what is in a chart's crds/ folder, and a chart
# cannot reach files outside itself, so the chart carries a copy; the chart_crds_in_sync test
# runs this with --check.
#
# Usage: tests/chart/sync_crds.sh           copy crds/*.yaml into charts/pdpool/crds/
#        tests/chart/sync_crds.sh --check   exit 1 (naming the files) when the copies differ
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
src="$root/crds"
dst="$root/charts/pdpool/crds"
check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "sync_crds.sh: unknown argument $1 (usage: sync_crds.sh [--check])" >&2; exit 2 ;;
esac

stale=()
for f in "$src"/*.yaml; do
  name=$(basename "$f")
  cmp -s "$f" "$dst/$name" || stale+=("$name")
done
for f in "$dst"/*.yaml; do
  [[ -e $f ]] || continue
  [[ -e $src/$(basename "$f") ]] || stale+=("$(basename "$f") (not in crds/)")
done

if $check; then
  if ((${#stale[@]})); then
    echo "sync_crds.sh: charts/pdpool/crds/ differs from crds/: ${stale[*]}" >&2
    echo "sync_crds.sh: run tests/chart/sync_crds.sh to copy crds/ into the chart" >&2
    exit 1
  fi
  echo "charts/pdpool/crds/ matches crds/"
  exit 0
fi
mkdir -p "$dst"
for f in "$dst"/*.yaml; do
  if [[ -e $f && ! -e $src/$(basename "$f") ]]; then rm -f "$f"; fi
done
cp "$src"/*.yaml "$dst"/
echo "copied $(ls "$src"/*.yaml | wc -l) CRD file(s) into charts/pdpool/crds/"
