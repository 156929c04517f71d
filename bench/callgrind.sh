#!/usr/bin/env bash
# Instructions per packet of the pipeline alone, by callgrind: the
# difference between two runs of different lengths, so that setup cancels.
# Usage: bench/callgrind.sh [target/release/meshgate-bench]
set -euo pipefail
bin=${1:-target/release/meshgate-bench}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for c in established reply new; do
  for n in 20000 40000; do
    valgrind --tool=callgrind --callgrind-out-file="$tmp/$c.$n" "$bin" pipeline --case "$c" --iterations "$n" >/dev/null 2>&1
  done
  a=$(awk '/^(summary|totals):/ {print $2; exit}' "$tmp/$c.20000")
  b=$(awk '/^(summary|totals):/ {print $2; exit}' "$tmp/$c.40000")
  echo "$c $(( (b - a) / 20000 ))"
done
