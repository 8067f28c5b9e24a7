#!/usr/bin/env bash
# bench/run.sh: side-by-side benchmark of the targets in BENCHMARKS.md, all in one run.
#
# Builds the custom Caddy (./cmd/caddy), bench/altapp and bench/mixload,
# starts them on loopback, checks that every scenario answers 302 with a
# Location, warms up, then runs wrk in alternating rounds (a b c d, then
# b a d c), then the realistic mix against the handler and the status quo
# (e f, then f e), and prints requests/s and server CPU per request for each
# round, the medians and the target ratios, and draws them with gnuplot
# (bench/plot.gp). See bench/README.md.
#
#   bench/run.sh                       # full run: 10 rounds of 5s per scenario
#   ROUNDS=20 DURATION=10s bench/run.sh
#   bench/run.sh --smoke               # CI: 1 round of 1s (same as SMOKE=1)
#
# Environment: ROUNDS, DURATION, WARMUP, THREADS, CONNECTIONS, MIX_ROUNDS,
# MIX_REQUESTS, SMOKE, RESULTS_FILE. Timings are never pass/fail; only a
# broken scenario fails.
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

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
	MIX_ROUNDS=${MIX_ROUNDS:-1} MIX_REQUESTS=${MIX_REQUESTS:-2000}
	MODE=smoke
else
	ROUNDS=${ROUNDS:-10} DURATION=${DURATION:-5s} WARMUP=${WARMUP:-3s}
	MIX_ROUNDS=${MIX_ROUNDS:-5} MIX_REQUESTS=${MIX_REQUESTS:-40000}
	MODE=full
fi
# The realistic mix (bench/mixload): its parameters are reported with it.
MIX_EXPORTS=100000 MIX_ZIPF_S=1.1 MIX_KEYS=8 MIX_POLL_SHARE=0.1 MIX_PENDING=200 MIX_COMPLETE_BY=0.8
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
# The picture beside the report; a full run also refreshes the committed
# copy that BENCHMARKS.md shows.
PLOT_FILE=${RESULTS_FILE%.txt}.svg
COMMITTED_PLOT=$BENCH/benchmark.svg

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
command -v gnuplot >/dev/null || apt_install gnuplot-nox || die "cannot install gnuplot (apt-get install gnuplot-nox)"
command -v go >/dev/null || die "go is not on PATH"

log "building $BIN/caddy, $BIN/altapp and $BIN/mixload"
mkdir -p "$BIN" "$RUN" "$RESULTS_DIR"
(cd "$ROOT" && go build -o "$BIN/caddy" ./cmd/caddy) || die "go build ./cmd/caddy"
(cd "$ROOT" && go build -o "$BIN/altapp" ./bench/altapp) || die "go build ./bench/altapp"
(cd "$ROOT" && go build -o "$BIN/mixload" ./bench/mixload) || die "go build ./bench/mixload"
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
	-mix-keys "$MIX_KEYS" >"$RUN/altapp.log" 2>&1 &
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

# --- realistic mix ------------------------------------------------------------

# The same stream of the realistic mix goes to (a), the handler with its
# cache: scenario (e), and to (c), the status quo: scenario (f). In each
# round each site gets ids of its own (mixload -tag), so both start cold and
# find the pending exports pending.
MIX_SCENARIOS=(e f)
declare -A MIX_SITE=([e]=a [f]=c) MIX_TAG_OFFSET=([e]=0 [f]=1)
NAME[e]="realistic mix, export_download"
NAME[f]="realistic mix, reverse_proxy to app"

# mixrun <scenario> <round> <requests>: sends the mix; sets MX_* from
# mixload's key=value line.
mixrun() {
	local out kv
	out=$("$BIN/mixload" -addr "127.0.0.1:${PORT[${MIX_SITE[$1]}]}" -connections "$CONNECTIONS" \
		-requests "$3" -exports "$MIX_EXPORTS" -zipf-s "$MIX_ZIPF_S" -keys "$MIX_KEYS" \
		-poll-share "$MIX_POLL_SHARE" -pending "$MIX_PENDING" -complete-by "$MIX_COMPLETE_BY" \
		-app "http://127.0.0.1:$APP_PORT" \
		-round "$2" -tag $((2 * $2 + MIX_TAG_OFFSET[$1])) 2>&1) || die "mixload failed on ($1): $out"
	for kv in $out; do
		[[ $kv == *=* ]] && printf -v "MX_${kv%%=*}" '%s' "${kv#*=}"
	done
	[[ -n ${MX_rps:-} ]] || die "cannot parse mixload output for ($1): $out"
	kill -0 "$CADDY_PID" 2>/dev/null || die "caddy exited during ($1)"
	kill -0 "$APP_PID" 2>/dev/null || die "altapp exited during ($1)"
}

log "realistic mix: warm-up, then $MIX_ROUNDS rounds x 2 sites x $MIX_REQUESTS requests"
for s in "${MIX_SCENARIOS[@]}"; do mixrun "$s" 0 $((MIX_REQUESTS / 4)); done
declare -A MIX_REQS MIX_META MIX_DOWN MIX_NOTREADY MIX_302 MIX_400 MIX_BAD MIX_ERR
for s in "${MIX_SCENARIOS[@]}"; do
	MIX_REQS[$s]=0 MIX_META[$s]=0 MIX_DOWN[$s]=0 MIX_NOTREADY[$s]=0 MIX_302[$s]=0 MIX_400[$s]=0 MIX_BAD[$s]=0 MIX_ERR[$s]=0
done
for ((r = 1; r <= MIX_ROUNDS; r++)); do
	order=(e f)
	((r % 2 == 0)) && order=(f e)
	line="mix round $r:"
	for s in "${order[@]}"; do
		m0=$(counter metadata_requests) d0=$(counter download_requests) n0=$(counter not_ready)
		ct0=$(cpu_ticks "$CADDY_PID") at0=$(cpu_ticks "$APP_PID")
		mixrun "$s" "$r" "$MIX_REQUESTS"
		ct1=$(cpu_ticks "$CADDY_PID") at1=$(cpu_ticks "$APP_PID")
		m1=$(counter metadata_requests) d1=$(counter download_requests) n1=$(counter not_ready)
		RPS_OF[$s,$r]=$MX_rps
		CADDY_US[$s,$r]=$(awk -v t=$((ct1 - ct0)) -v hz="$CLK_TCK" -v n="$MX_requests" 'BEGIN { printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0) }')
		APP_US[$s,$r]=$(awk -v t=$((at1 - at0)) -v hz="$CLK_TCK" -v n="$MX_requests" 'BEGIN { printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0) }')
		MIX_REQS[$s]=$((MIX_REQS[$s] + MX_requests))
		MIX_META[$s]=$((MIX_META[$s] + m1 - m0))
		MIX_DOWN[$s]=$((MIX_DOWN[$s] + d1 - d0))
		MIX_NOTREADY[$s]=$((MIX_NOTREADY[$s] + n1 - n0))
		MIX_302[$s]=$((MIX_302[$s] + MX_s302))
		MIX_400[$s]=$((MIX_400[$s] + MX_s400))
		MIX_BAD[$s]=$((MIX_BAD[$s] + MX_s4xx + MX_s5xx + MX_other))
		MIX_ERR[$s]=$((MIX_ERR[$s] + MX_errors))
		line+=" $s=$MX_rps"
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
			printf "paired b/a (median of per-round ratios) = %.3f   (the CPU view of \"a >= 0.95 x b\")\n", mp
		} else {
			printf "ratios of medians:   a/b = %.3f   a/c = %.2f   a/d = %.2f\n", ratio(ma, mb), ratio(ma, mc), ratio(ma, md)
			printf "paired a/b (median of per-round ratios) = %.3f   (target: >= 0.95)\n", mp
			printf "a/c = %.2f   (target: >= 5)\n", ratio(ma, mc)
		}
	}'
}

# median: the median of the numbers on stdin, one a line.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# med <RPS_OF|CADDY_US|APP_US> <scenario> <rounds>: the median over the rounds.
med() {
	local -n arr=$1
	local r
	for ((r = 1; r <= $3; r++)); do echo "${arr[$2,$r]}"; done | median
}
# paired <x> <y> <rounds>: the median of the per-round requests/s ratios x/y.
paired() {
	local r
	for ((r = 1; r <= $3; r++)); do
		awk -v x="${RPS_OF[$1,$r]}" -v y="${RPS_OF[$2,$r]}" 'BEGIN { printf "%.6f\n", (y > 0 ? x / y : 0) }'
	done | median
}
div() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.3f", (y > 0 ? x / y : 0) }'; }
# verdict <value> <ge|le> <target>
verdict() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { ok = op == "ge" ? v >= t : v <= t; print ok ? "met" : "NOT met" }'; }

declare -A MED_RPS MED_CADDY MED_APP
for s in "${SCENARIOS[@]}"; do
	MED_RPS[$s]=$(med RPS_OF "$s" "$ROUNDS") MED_CADDY[$s]=$(med CADDY_US "$s" "$ROUNDS") MED_APP[$s]=$(med APP_US "$s" "$ROUNDS")
done
for s in "${MIX_SCENARIOS[@]}"; do
	MED_RPS[$s]=$(med RPS_OF "$s" "$MIX_ROUNDS") MED_CADDY[$s]=$(med CADDY_US "$s" "$MIX_ROUNDS") MED_APP[$s]=$(med APP_US "$s" "$MIX_ROUNDS")
done
T_HIT=$(paired a b "$ROUNDS")
T_ALT=$(div "${MED_RPS[a]}" "${MED_RPS[c]}")
T_COLD=$(div "${MED_RPS[d]}" "${MED_RPS[c]}") T_COLD_PAIRED=$(paired d c "$ROUNDS")
T_CPU=$(div "${MED_CADDY[d]}" "${MED_CADDY[c]}")
T_MIX=$(div "${MED_RPS[e]}" "${MED_RPS[f]}") T_MIX_PAIRED=$(paired e f "$MIX_ROUNDS")
MIX_SAVED=$((MIX_REQS[e] - MIX_META[e]))
MIX_SAVED_PCT=$(awk -v s="$MIX_SAVED" -v n="${MIX_REQS[e]}" 'BEGIN { printf "%.1f", (n > 0 ? 100 * s / n : 0) }')

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
	echo
	echo "realistic mix (bench/mixload, $MIX_REQUESTS requests per site and round, $CONNECTIONS connections, $MIX_ROUNDS rounds after a warm-up)"
	echo "  $MIX_EXPORTS completed exports with Zipf popularity (s = $MIX_ZIPF_S), $MIX_KEYS API keys (each export has one owner),"
	echo "  $(awk -v p="$MIX_POLL_SHARE" 'BEGIN { printf "%g", 100 * p }')% of requests poll one of $MIX_PENDING pending exports, each completing at a point of the stream"
	echo "  drawn from its first $(awk -v p="$MIX_COMPLETE_BY" 'BEGIN { printf "%g", 100 * p }')% (the same point for both sites);"
	echo "  (e) sends it to (a), export_download with its cache; (f) to (c), reverse_proxy to the app that presigns per request"
	printf '%-8s %14s %14s %9s   %14s %14s\n' round e_rps f_rps e/f e_cpu_us f_cpu_us
	for ((r = 1; r <= MIX_ROUNDS; r++)); do
		awk -v r="$r" -v e="${RPS_OF[e,$r]}" -v f="${RPS_OF[f,$r]}" \
			-v ec="$(awk -v x="${CADDY_US[e,$r]}" -v y="${APP_US[e,$r]}" 'BEGIN { print x + y }')" \
			-v fc="$(awk -v x="${CADDY_US[f,$r]}" -v y="${APP_US[f,$r]}" 'BEGIN { print x + y }')" \
			'BEGIN { printf "%-8s %14.0f %14.0f %9.3f   %14.1f %14.1f\n", r, e, f, (f > 0 ? e / f : 0), ec, fc }'
	done
	printf '%-8s %14.0f %14.0f %9.3f   %14.1f %14.1f\n' median "${MED_RPS[e]}" "${MED_RPS[f]}" "$T_MIX" \
		"$(awk -v x="${MED_CADDY[e]}" -v y="${MED_APP[e]}" 'BEGIN { print x + y }')" \
		"$(awk -v x="${MED_CADDY[f]}" -v y="${MED_APP[f]}" 'BEGIN { print x + y }')"
	for s in "${MIX_SCENARIOS[@]}"; do
		printf '  (%s) median Caddy %6.1f us + altapp %6.1f us per request\n' "$s" "${MED_CADDY[$s]}" "${MED_APP[$s]}"
	done
	printf '  %-4s %10s %14s %14s %10s %16s %8s %8s\n' "" requests metadata_calls download_calls 302 "400_not_ready" other errors
	for s in "${MIX_SCENARIOS[@]}"; do
		printf '  (%s)  %10d %14d %14d %10d %16d %8d %8d\n' "$s" "${MIX_REQS[$s]}" "${MIX_META[$s]}" "${MIX_DOWN[$s]}" \
			"${MIX_302[$s]}" "${MIX_400[$s]}" "${MIX_BAD[$s]}" "${MIX_ERR[$s]}"
	done
	echo "  metadata-API calls saved by the cache: $MIX_SAVED of ${MIX_REQS[e]} requests ($MIX_SAVED_PCT%); the status quo asks the app on every request"
	echo
	echo "targets (BENCHMARKS.md), as ratios of this run; never pass/fail"
	printf '  %-58s %8s  %-8s %s\n' \
		"cache hit vs redir, paired a/b" "$(awk -v x="$T_HIT" 'BEGIN { printf "%.3f", x }')" ">= 0.95" "$(verdict "$T_HIT" ge 0.95)" \
		"cache hit vs status quo, a/c" "$T_ALT" ">= 5" "$(verdict "$T_ALT" ge 5)" \
		"cache off vs status quo, d/c requests/s" "$T_COLD" ">= 1.1" "$(verdict "$T_COLD" ge 1.1) (paired $(awk -v x="$T_COLD_PAIRED" 'BEGIN { printf "%.3f", x }'))" \
		"Caddy CPU per cold request vs proxying, Caddy (d)/(c)" "$T_CPU" "<= 1.5" "$(verdict "$T_CPU" le 1.5)" \
		"realistic mix vs status quo, e/f requests/s" "$T_MIX" ">= 2" "$(verdict "$T_MIX" ge 2) (paired $(awk -v x="$T_MIX_PAIRED" 'BEGIN { printf "%.3f", x }'))"
} >"$RESULTS_FILE"

# The picture: requests/s and CPU per request of each scenario (medians),
# the target ratios under them.
PLOT_DATA=${RESULTS_FILE%.txt}.dat
declare -A LABEL=([a]="(a) cache hit" [b]="(b) redir" [c]="(c) proxy+app" [d]="(d) cache off"
	[e]="(e) mix: handler" [f]="(f) mix: proxy+app")
for s in "${SCENARIOS[@]}" "${MIX_SCENARIOS[@]}"; do
	printf '"%s" %s %s %s\n' "${LABEL[$s]}" "${MED_RPS[$s]}" "${MED_CADDY[$s]}" "${MED_APP[$s]}"
done >"$PLOT_DATA"
plot_ratios=$(sed -n '/^targets/,$p' "$RESULTS_FILE" | sed 's/^  //; s/"/'"'"'/g' | awk '{ printf "%s\\n", $0 }')
plot_heading="caddy-export-download benchmark ($MODE run$([[ $MODE == smoke ]] && echo ', numbers not meaningful'), $(date -u +%Y-%m-%d), $(nproc) CPUs, load $LOAD_BEFORE / $LOAD_AFTER)"
gnuplot -e "datafile='$PLOT_DATA'; outfile='$PLOT_FILE'; heading='$plot_heading'; ratios=\"$plot_ratios\"" "$BENCH/plot.gp" \
	>"$RUN/gnuplot.log" 2>&1 || die "gnuplot failed: $(cat "$RUN/gnuplot.log")"
[[ -s $PLOT_FILE ]] || die "gnuplot wrote no $PLOT_FILE"

cat "$RESULTS_FILE"
if [[ $MODE == full ]]; then
	stamp=$(date -u +%Y%m%d-%H%M%S)
	cp "$RESULTS_FILE" "$RESULTS_DIR/$stamp.txt"
	cp "$PLOT_FILE" "$RESULTS_DIR/$stamp.svg"
	cp "$PLOT_FILE" "$COMMITTED_PLOT"
fi
log "results written to ${RESULTS_FILE#"$ROOT"/}, picture to ${PLOT_FILE#"$ROOT"/}"
[[ $MODE == full ]] && log "picture also copied to ${COMMITTED_PLOT#"$ROOT"/} (shown in BENCHMARKS.md)"

bad=0
for s in "${SCENARIOS[@]}"; do bad=$((bad + BAD_OF[$s])); done
((bad == 0)) || die "$bad answers were not 2xx/3xx during the measured rounds"
bad=$((MIX_BAD[e] + MIX_BAD[f]))
((bad == 0)) || die "$bad answers of the realistic mix were neither 302 nor 400 (not ready)"
((MIX_302[e] > 0 && MIX_302[f] > 0)) || die "the realistic mix got no 302 from one of the sites"
((MIX_ERR[e] + MIX_ERR[f] == 0)) || log "run.sh: warning: $((MIX_ERR[e] + MIX_ERR[f])) requests of the realistic mix failed (connection errors)"
