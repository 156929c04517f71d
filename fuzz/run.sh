#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) one after the other,
# from the committed seed corpus. Needs cargo-fuzz (cargo install
# cargo-fuzz); RUSTC_BOOTSTRAP lets it use this stable toolchain.
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(wire_ethernet wire_arp wire_ipv4 wire_tcp wire_udp wire_icmp wire_ipv6 wire_icmpv6 wire_vxlan pipeline config api_request docker_api handover journal announce fragments)
export RUSTC_BOOTSTRAP=1
cargo fuzz build --sanitizer none -O
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  # Work on a copy: the committed corpus stays the seeds.
  work=$(mktemp -d)
  cp -r "corpus/$t/." "$work/"
  echo "== $t for ${secs}s"
  cargo fuzz run --sanitizer none -O "$t" "$work" -- -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="artifacts/$t/" 2>&1 | grep -E "^(#|stat::|==|Done|INFO: .*corpus)" | tail -6
  rm -rf "$work"
done
