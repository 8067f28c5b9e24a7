#!/usr/bin/env bash
# bench/fleet/run.sh: the fleet tier's benchmarks, all in one run.
#
# Builds the custom Caddy (./cmd/caddy) and the driver (bench/fleet), then
# runs the driver, which starts redis-server, the Caddy nodes and a fake
# metadata API on loopback (free ports) and measures:
#   1. a local hit with the fleet tier on vs off (wrk, paired rounds),
#   2. a shared hit vs an upstream call (latency),
#   3. DELETE-2xx to the export dropped on every one of N nodes (p50/p99).
# The report goes to stdout and to bench/fleet/results/latest.txt
# (smoke.txt with --smoke). See bench/fleet/README.md.
#
#   bench/fleet/run.sh                        # full: 15 rounds of 2s, 250 invalidations, 10 nodes (about 4 minutes)
#   bench/fleet/run.sh --smoke                # CI-sized: seconds, 3 nodes
#   bench/fleet/run.sh -fleet-timeout 250ms   # any further flags go to the driver
#
# Timings are never pass/fail; only a broken setup fails.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

SMOKE=0
ARGS=()
for arg in "$@"; do
	case $arg in
	--smoke) SMOKE=1 ;;
	-h | --help) usage; exit 0 ;;
	*) ARGS+=("$arg") ;;
	esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/bench/fleet
BIN=$HERE/.bin
RESULTS_DIR=$HERE/results

log() { printf '%s\n' "$*" >&2; }
die() { log "fleet/run.sh: FAIL: $*"; exit 1; }

apt_install() {
	local sudo=()
	[[ $(id -u) -ne 0 ]] && sudo=(sudo)
	"${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y "$@"
}
command -v go >/dev/null || die "go is not on PATH"
command -v redis-server >/dev/null || apt_install redis-server || die "cannot install redis-server (apt-get install redis-server)"
command -v wrk >/dev/null || apt_install wrk || die "cannot install wrk (apt-get install wrk)"

mkdir -p "$BIN" "$RESULTS_DIR"
log "building $BIN/caddy and $BIN/fleetbench"
(cd "$ROOT" && go build -o "$BIN/caddy" ./cmd/caddy) || die "go build ./cmd/caddy"
(cd "$ROOT" && go build -o "$BIN/fleetbench" ./bench/fleet) || die "go build ./bench/fleet"

if [[ $SMOKE == 1 ]]; then
	SIZE=(-rounds 1 -duration 1s -warmup 1s -samples 50 -invalidations 20 -idle 100ms -nodes 3)
	RESULTS_FILE=${RESULTS_FILE:-$RESULTS_DIR/smoke.txt}
else
	SIZE=()
	RESULTS_FILE=${RESULTS_FILE:-$RESULTS_DIR/latest.txt}
fi

"$BIN/fleetbench" -caddy "$BIN/caddy" -redis-server "$(command -v redis-server)" -wrk "$(command -v wrk)" \
	"${SIZE[@]}" "${ARGS[@]}" | tee "$RESULTS_FILE"
log "report written to $RESULTS_FILE"
