#!/usr/bin/env bash
# bench/run.sh: side-by-side benchmark of SPEC §7, all in one run.
#
# Builds the custom Caddy (./cmd/caddy) and bench/altapp, starts them on
# loopback, checks that every scenario answers 302 with a Location, warms up,
# then runs wrk in alternating rounds (a b c d, then b a d c) and prints
# requests/s and server CPU per request for each round, the medians and the
# ratios. See bench/README.md.
#
#   bench/run.sh                       # full run: 10 rounds of 5s per scenario
#   ROUNDS=20 DURATION=10s bench/run.sh
#   bench/run.sh --smoke               # CI: 1 round of 1s (same as SMOKE=1)
#
# Environment: ROUNDS, DURATION, WARMUP, THREADS, CONNECTIONS, SMOKE,
# RESULTS_FILE. Timings are never pass/fail; only a broken scenario fails.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

SMOKE=${SMOKE:-0}
for arg in "$@"; do
	case $arg in
	--smoke) SMOKE=1 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "run.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
	esac
done

if [[ $SMOKE == 1 ]]; then
	ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-1s} WARMUP=${WARMUP:-1s}
	MODE=smoke
else
	ROUNDS=${ROUNDS:-10} DURATION=${DURATION:-5s} WARMUP=${WARMUP:-3s}
	MODE=full
fi
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
BIN=$BENCH/.bin
RUN=$BENCH/.run
RESULTS_DIR=$BENCH/results
if [[ $MODE == smoke ]]; then
	RESULTS_FILE=${RESULTS_FILE:-$RESULTS_DIR/smoke.txt}
else
	RESULTS_FILE=${RESULTS_FILE:-$RESULTS_DIR/latest.txt}
fi

API_KEY=hb_test_bench
EXPORT_ID=01935abc-def0-7123-4567-890abcdef012
REQ_PATH=/v1/exports/$EXPORT_ID/download
SCENARIOS=(a b c d)
declare -A NAME=(
	[a]="export_download, cache hit"
	[b]="redir, same response size"
	[c]="reverse_proxy to app that presigns"
	[d]="export_download, cache off"
)

log() { printf '%s\n' "$*" >&2; }
die() {
	log "run.sh: FAIL: $*"
	for f in "$RUN"/altapp.log "$RUN"/caddy.log; do
		[[ -s $f ]] && { log "--- last lines of $f"; tail -n 20 "$f" >&2; }
	done
	exit 1
}

# --- tools --------------------------------------------------------------------

apt_install() {
	local sudo=()
	[[ $(id -u) -ne 0 ]] && sudo=(sudo)
	"${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y "$@"
}
command -v wrk >/dev/null || apt_install wrk || die "cannot install wrk"
command -v curl >/dev/null || apt_install curl || die "cannot install curl"
command -v go >/dev/null || die "go is not on PATH"

log "building $BIN/caddy and $BIN/altapp"
mkdir -p "$BIN" "$RUN" "$RESULTS_DIR"
(cd "$ROOT" && go build -o "$BIN/caddy" ./cmd/caddy) || die "go build ./cmd/caddy"
(cd "$ROOT" && go build -o "$BIN/altapp" ./bench/altapp) || die "go build ./bench/altapp"
modules=$("$BIN/caddy" list-modules 2>/dev/null) || die "$BIN/caddy list-modules"
grep -qx 'http.handlers.export_download' <<<"$modules" ||
	die "$BIN/caddy does not include http.handlers.export_download"

# --- processes ----------------------------------------------------------------

PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ports=$("$BIN/altapp" -free-ports 6) || die "cannot find free ports"
read -r APP_PORT ADMIN_PORT PORT_A PORT_B PORT_C PORT_D <<<"${ports//$'\n'/ }"
declare -A PORT=([a]=$PORT_A [b]=$PORT_B [c]=$PORT_C [d]=$PORT_D)
export BENCH_APP_PORT=$APP_PORT BENCH_ADMIN_PORT=$ADMIN_PORT
export BENCH_PORT_A=$PORT_A BENCH_PORT_B=$PORT_B BENCH_PORT_C=$PORT_C BENCH_PORT_D=$PORT_D
# Keep Caddy's config and data directories out of $HOME.
export XDG_CONFIG_HOME=$RUN/config XDG_DATA_HOME=$RUN/data

wait_http() { # url what
	local i
	for ((i = 0; i < 100; i++)); do
		curl -s -o /dev/null --max-time 1 "$1" && return 0
		sleep 0.1
	done
	die "$2 did not come up at $1"
}

"$BIN/altapp" -addr "127.0.0.1:$APP_PORT" -api-key "$API_KEY" -export-id "$EXPORT_ID" \
	>"$RUN/altapp.log" 2>&1 &
APP_PID=$!
PIDS+=("$APP_PID")
wait_http "http://127.0.0.1:$APP_PORT/debug/counters" altapp

"$BIN/caddy" run --config "$BENCH/Caddyfile" --adapter caddyfile >"$RUN/caddy.log" 2>&1 &
CADDY_PID=$!
PIDS+=("$CADDY_PID")
wait_http "http://127.0.0.1:$ADMIN_PORT/config/" "caddy admin"
for s in "${!PORT[@]}"; do wait_http "http://127.0.0.1:${PORT[$s]}/" "caddy site ($s)"; done

# --- checks -------------------------------------------------------------------

url() { echo "http://127.0.0.1:${PORT[$1]}$REQ_PATH"; }

# probe <scenario>: one request; sets STATUS, LOCATION, REQUEST_ID, CACHE_STATUS
# and HEADER_BYTES (the size of the response head on the wire).
probe() {
	local hdrs=$RUN/probe-$1.txt
	curl -s -o /dev/null -D "$hdrs" --max-time 5 -H "Authorization: Bearer $API_KEY" "$(url "$1")" ||
		die "($1) request failed"
	HEADER_BYTES=$(wc -c <"$hdrs")
	STATUS=$(awk 'NR == 1 { print $2 }' "$hdrs")
	LOCATION=$(tr -d '\r' <"$hdrs" | awk 'tolower($1) == "location:" { print $2 }')
	REQUEST_ID=$(tr -d '\r' <"$hdrs" | awk 'tolower($1) == "x-request-id:" { print $2 }')
	CACHE_STATUS=$(tr -d '\r' <"$hdrs" | awk 'tolower($1) == "cache-status:" { sub(/^[^:]*: */, ""); print }')
}

probe a
[[ $STATUS == 302 && -n $LOCATION ]] || die "(a) answered $STATUS, Location '${LOCATION:0:80}', want 302 with a Location"
probe a # the second one is a cache hit: measure that
[[ $STATUS == 302 && -n $LOCATION ]] || die "(a) answered $STATUS on the second request"
[[ $CACHE_STATUS == "export_download; hit" ]] ||
	log "run.sh: warning: (a) second request has Cache-Status '$CACHE_STATUS', want 'export_download; hit'"
LOC_LEN=${#LOCATION}
RID_LEN=${#REQUEST_ID}
((RID_LEN > 0)) || die "(a) answered without X-Request-Id"

# (b)'s fixed Location and request id: the same lengths as (a)'s.
prefix="http://localhost:7070/bench-exports/redir-target.csv?pad="
((LOC_LEN > ${#prefix})) || die "(a)'s Location is only $LOC_LEN bytes"
pad=$(printf '%*s' $((LOC_LEN - ${#prefix})) '' | tr ' ' x)
export BENCH_REDIR_URL=$prefix$pad
pad=$(printf '%*s' $((RID_LEN > 4 ? RID_LEN - 4 : 0)) '' | tr ' ' 0)
export BENCH_REQUEST_ID=req_$pad
"$BIN/caddy" reload --config "$BENCH/Caddyfile" --adapter caddyfile --address "127.0.0.1:$ADMIN_PORT" \
	>>"$RUN/caddy.log" 2>&1 || die "caddy reload with the redir target"

declare -A HDR_BYTES
for s in "${SCENARIOS[@]}"; do
	probe "$s"
	[[ $STATUS == 302 && -n $LOCATION ]] || die "($s) answered $STATUS, want 302 with a Location"
	HDR_BYTES[$s]=$HEADER_BYTES
done
probe b
[[ ${#LOCATION} == "$LOC_LEN" && ${#REQUEST_ID} == "$RID_LEN" ]] ||
	die "(b) Location/X-Request-Id are ${#LOCATION}/${#REQUEST_ID} bytes, want $LOC_LEN/$RID_LEN"
log "all four scenarios answer 302; Location $LOC_LEN bytes"

# --- load ---------------------------------------------------------------------

# counter <name>: altapp's count of requests to one of its roles.
counter() {
	curl -s --max-time 5 "http://127.0.0.1:$APP_PORT/debug/counters" |
		sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"
}

# cpu_ticks <pid>: user+system CPU time the process has used, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

# load <scenario> <duration>: runs wrk; sets RPS, REQS, BAD (non-3xx answers)
# and SOCKERR (socket errors).
load() {
	local out
	out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2" -H "Authorization: Bearer $API_KEY" "$(url "$1")" 2>&1) ||
		die "wrk failed on ($1): $out"
	RPS=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
	REQS=$(awk '/ requests in / { print $1 }' <<<"$out")
	BAD=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
	SOCKERR=$(awk '/Socket errors:/ { n = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i; print n }' <<<"$out")
	BAD=${BAD:-0} SOCKERR=${SOCKERR:-0}
	[[ -n $RPS ]] || die "cannot parse wrk output for ($1): $out"
	kill -0 "$CADDY_PID" 2>/dev/null || die "caddy exited during ($1)"
	kill -0 "$APP_PID" 2>/dev/null || die "altapp exited during ($1)"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
log "warm-up: $WARMUP per scenario"
for s in "${SCENARIOS[@]}"; do load "$s" "$WARMUP"; done

log "measuring: $ROUNDS rounds x ${#SCENARIOS[@]} scenarios x $DURATION (wrk -t$THREADS -c$CONNECTIONS)"
declare -A RPS_OF CADDY_US APP_US REQS_OF META_OF DOWN_OF BAD_OF SOCK_OF
for s in "${SCENARIOS[@]}"; do REQS_OF[$s]=0 META_OF[$s]=0 DOWN_OF[$s]=0 BAD_OF[$s]=0 SOCK_OF[$s]=0; done
for ((r = 1; r <= ROUNDS; r++)); do
	# Odd rounds run a b c d, even rounds b a d c: each of a pair goes first
	# half the time, so neither always follows the garbage (d) leaves behind.
	order=(a b c d)
	((r % 2 == 0)) && order=(b a d c)
	line="round $r:"
	for s in "${order[@]}"; do
		m0=$(counter metadata_requests) d0=$(counter download_requests)
		ct0=$(cpu_ticks "$CADDY_PID") at0=$(cpu_ticks "$APP_PID")
		load "$s" "$DURATION"
		ct1=$(cpu_ticks "$CADDY_PID") at1=$(cpu_ticks "$APP_PID")
		m1=$(counter metadata_requests) d1=$(counter download_requests)
		RPS_OF[$s,$r]=$RPS
		# CPU microseconds per request spent by Caddy and by altapp (not wrk).
		CADDY_US[$s,$r]=$(awk -v t=$((ct1 - ct0)) -v hz="$CLK_TCK" -v n="$REQS" 'BEGIN { printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0) }')
		APP_US[$s,$r]=$(awk -v t=$((at1 - at0)) -v hz="$CLK_TCK" -v n="$REQS" 'BEGIN { printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0) }')
		REQS_OF[$s]=$((REQS_OF[$s] + REQS))
		META_OF[$s]=$((META_OF[$s] + m1 - m0))
		DOWN_OF[$s]=$((DOWN_OF[$s] + d1 - d0))
		BAD_OF[$s]=$((BAD_OF[$s] + BAD))
		SOCK_OF[$s]=$((SOCK_OF[$s] + SOCKERR))
		line+=" $s=$RPS"
	done
	log "$line"
done

# --- report -------------------------------------------------------------------

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')

# report_table <rps|cpu> reads "round a b c d" lines and prints the rows, min,
# max and median of each column, a paired-ratio column and a summary. For rps
# the ratio is a/b; for cpu (microseconds per request, lower is better) it is
# b/a, so that in both tables a value of 1 means "a costs what b costs" and a
# higher value favours a.
report_table() {
	awk -v kind="$1" '
	function median(v, n,    i, j, t, w) {
		for (i = 1; i <= n; i++) w[i] = v[i]
		for (i = 2; i <= n; i++) { t = w[i]; for (j = i - 1; j >= 1 && w[j] > t; j--) w[j + 1] = w[j]; w[j + 1] = t }
		return n % 2 ? w[(n + 1) / 2] : (w[n / 2] + w[n / 2 + 1]) / 2
	}
	function lo(v, n,    i, m) { m = v[1]; for (i = 2; i <= n; i++) if (v[i] < m) m = v[i]; return m }
	function hi(v, n,    i, m) { m = v[1]; for (i = 2; i <= n; i++) if (v[i] > m) m = v[i]; return m }
	function ratio(x, y) { return y > 0 ? x / y : 0 }
	function row(label, w, x, y, z, q) { printf "%-8s %12" f " %12" f " %12" f " %12" f " %9.3f\n", label, w, x, y, z, q }
	BEGIN { f = kind == "cpu" ? ".1f" : ".0f" }
	{
		n++; a[n] = $2; b[n] = $3; c[n] = $4; d[n] = $5
		p[n] = kind == "cpu" ? ratio($3, $2) : ratio($2, $3)
		row($1, $2, $3, $4, $5, p[n])
	}
	END {
		ma = median(a, n); mb = median(b, n); mc = median(c, n); md = median(d, n); mp = median(p, n)
		row("min", lo(a, n), lo(b, n), lo(c, n), lo(d, n), lo(p, n))
		row("max", hi(a, n), hi(b, n), hi(c, n), hi(d, n), hi(p, n))
		row("median", ma, mb, mc, md, mp)
		print ""
		if (kind == "cpu") {
			printf "CPU cost relative to a (of medians):   b/a = %.3f   c/a = %.2f   d/a = %.2f\n", ratio(mb, ma), ratio(mc, ma), ratio(md, ma)
			printf "paired b/a (median of per-round ratios) = %.3f   (the CPU view of \"a >= 0.9 x b\")\n", mp
		} else {
			printf "ratios of medians:   a/b = %.3f   a/c = %.2f   a/d = %.2f\n", ratio(ma, mb), ratio(ma, mc), ratio(ma, md)
			printf "paired a/b (median of per-round ratios) = %.3f   (SPEC §7 target: >= 0.9)\n", mp
			printf "a/c = %.2f   (SPEC §7 target: >= 4)\n", ratio(ma, mc)
		}
	}'
}

{
	echo "caddy-export-download benchmark ($MODE run), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "caddy: $("$BIN/caddy" version 2>/dev/null | head -n 1)   $(go version | cut -d' ' -f3-)"
	echo "host: $(nproc) CPUs, $(uname -sr); wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, warm-up $WARMUP"
	echo "load average (1/5/15 min): $LOAD_BEFORE before, $LOAD_AFTER after the rounds"
	echo "request: GET $REQ_PATH with Authorization: Bearer $API_KEY"
	echo
	for s in "${SCENARIOS[@]}"; do
		printf '  (%s) %-36s response headers %4d bytes\n' "$s" "${NAME[$s]}" "${HDR_BYTES[$s]}"
	done
	echo "  Location: $LOC_LEN bytes in (a) and (b); X-Request-Id: $RID_LEN bytes"
	echo
	echo "requests/s"
	printf '%-8s %12s %12s %12s %12s %9s\n' round a_hit b_redir c_proxy d_nocache a/b
	for ((r = 1; r <= ROUNDS; r++)); do
		echo "$r ${RPS_OF[a,$r]} ${RPS_OF[b,$r]} ${RPS_OF[c,$r]} ${RPS_OF[d,$r]}"
	done | report_table rps
	echo
	echo "server CPU per request, microseconds (Caddy + altapp, not wrk; lower is better)"
	printf '%-8s %12s %12s %12s %12s %9s
' round a_hit b_redir c_proxy d_nocache b/a
	for ((r = 1; r <= ROUNDS; r++)); do
		printf '%s' "$r"
		for s in "${SCENARIOS[@]}"; do
			awk -v x="${CADDY_US[$s,$r]}" -v y="${APP_US[$s,$r]}" 'BEGIN { printf " %.2f", x + y }'
		done
		echo
	done | report_table cpu
	for s in "${SCENARIOS[@]}"; do
		caddy_us=$(for ((r = 1; r <= ROUNDS; r++)); do echo "${CADDY_US[$s,$r]}"; done | sort -g | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
		app_us=$(for ((r = 1; r <= ROUNDS; r++)); do echo "${APP_US[$s,$r]}"; done | sort -g | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
		printf '  (%s) median Caddy %6.1f us + altapp %6.1f us per request
' "$s" "$caddy_us" "$app_us"
	done
	echo
	echo "requests that reached the app during the measured rounds"
	printf '  %-4s %12s %14s %14s %10s %10s\n' "" wrk_requests metadata_calls download_calls non_3xx sock_err
	for s in "${SCENARIOS[@]}"; do
		printf '  (%s)  %12d %14d %14d %10d %10d\n' "$s" "${REQS_OF[$s]}" "${META_OF[$s]}" "${DOWN_OF[$s]}" \
			"${BAD_OF[$s]}" "${SOCK_OF[$s]}"
	done
} >"$RESULTS_FILE"

cat "$RESULTS_FILE"
if [[ $MODE == full ]]; then
	cp "$RESULTS_FILE" "$RESULTS_DIR/$(date -u +%Y%m%d-%H%M%S).txt"
fi
log "results written to ${RESULTS_FILE#"$ROOT"/}"

bad=0
for s in "${SCENARIOS[@]}"; do bad=$((bad + BAD_OF[$s])); done
((bad == 0)) || die "$bad answers were not 2xx/3xx during the measured rounds"
