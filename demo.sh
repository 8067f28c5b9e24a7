#!/usr/bin/env bash
# demo.sh: run the whole demo on loopback with one command.
#
# Builds the custom Caddy (bin/caddy) and the sample metadata API
# (bin/demo-api), installs the pinned versitygw if it is missing, starts
# versitygw (S3, port 7070), the API (port 9080) and Caddy with
# Caddyfile.example (port 8080), uploads the demo CSVs, then shows a download,
# the error answers, and a key revoked in one command (the app tags answers
# with the key's id; `bin/caddy export-download purge --surrogate-key` drops
# them). It keeps running until Ctrl-C, which stops
# everything it started. With DEMO_EXIT=1 it exits after the checks (CI runs
# it that way as a smoke test); it exits non-zero when an answer is wrong.
#
# `./demo.sh fleet` runs a fleet instead of one Caddy: redis-server (port
# 6390) and two Caddy nodes (ports 8081 and 8082, admin and /metrics on
# localhost:2019 and localhost:2020) with the same `fleet` block, in front of
# the same API and S3. It shows a shared hit (node B answers from node A's
# decision, the API asked once) and a DELETE through node A taking effect on
# node B. DEMO_EXIT=1 works the same way.
set -euo pipefail

cd "$(dirname "$0")"

MODE=single
case ${1:-} in
"") ;;
fleet) MODE=fleet ;;
-h | --help)
	sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "usage: ./demo.sh [fleet]" >&2
	exit 2
	;;
esac

readonly VERSITYGW_PKG=github.com/versity/versitygw/cmd/versitygw@v1.8.0
readonly S3_PORT=7070 API_PORT=9080 CADDY_PORT=8080 ADMIN_PORT=2019
readonly BASE=http://127.0.0.1:${CADDY_PORT}
# Fleet mode: redis-server and two nodes.
readonly REDIS_PORT=6390 NODE_A_PORT=8081 NODE_B_PORT=8082 NODE_A_ADMIN=2019 NODE_B_ADMIN=2020
readonly NODE_A=http://127.0.0.1:${NODE_A_PORT} NODE_B=http://127.0.0.1:${NODE_B_PORT}

# Read by Caddyfile.example ({env.*}) and by `demo-api -seed`. S3 is reached
# as "localhost" while the API is 127.0.0.1: curl -L (like Go's client)
# would otherwise send Authorization on to S3, which refuses a request that
# has both that header and a presigned query.
export S3_ENDPOINT=http://localhost:${S3_PORT}
export S3_ACCESS_KEY_ID=demo-access-key
export S3_SECRET_ACCESS_KEY=demo-secret-key-not-for-production
export S3_BUCKET=demo-exports
export S3_REGION=us-east-1

# The demo exports and keys; keep in sync with cmd/demo-api/main.go.
readonly ID_COMPLETED=01938f2a-5c10-7a3e-9b41-2c6d8e0f1a01
readonly ID_PENDING=01938f2a-5c10-7a3e-9b41-2c6d8e0f1a02
readonly ID_PROCESSING=01938f2a-5c10-7a3e-9b41-2c6d8e0f1a03
readonly ID_FAILED=01938f2a-5c10-7a3e-9b41-2c6d8e0f1a04
readonly ID_EXPIRED=01938f2a-5c10-7a3e-9b41-2c6d8e0f1a05
readonly ID_PAST_EXPIRES_AT=01938f2a-5c10-7a3e-9b41-2c6d8e0f1a06
readonly ID_DISPOSABLE=01938f2a-5c10-7a3e-9b41-2c6d8e0f1a07
readonly ALICE='Authorization: Bearer hb_test_demo_alice'
readonly BOB='Authorization: Bearer hb_test_demo_bob'
# Alice's second key, which the single-node demo revokes; the app tags its
# answers with the key's id, key_leaked.
readonly LEAKED='Authorization: Bearer hb_test_demo_leaked' LEAKED_ID=key_leaked

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
fail() {
	printf '\n\033[31mFAIL: %s\033[0m\n' "$*" >&2
	exit 1
}
# show CMD...: print CMD the way one would type it, then run it.
show() {
	local line='$' arg
	for arg in "$@"; do
		if [[ $arg == *' '* ]]; then line+=" '$arg'"; else line+=" $arg"; fi
	done
	echo "$line" >&2
	"$@"
}

for tool in go curl; do
	command -v "$tool" >/dev/null || { echo "demo.sh needs $tool" >&2; exit 1; }
done
if [[ $MODE == fleet ]]; then
	command -v redis-server >/dev/null || {
		echo "./demo.sh fleet needs redis-server: install Debian's redis-server package (apt-get install redis-server)" >&2
		exit 1
	}
fi

# --- processes and cleanup ---------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/export-download-demo.XXXXXX")
PIDS=()

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	# A failure shows the services' logs; Ctrl-C (130) or TERM (143) does not.
	if [[ $status -ne 0 && $status -ne 130 && $status -ne 143 ]]; then
		for log in "$WORK"/*.log; do
			[[ -e $log ]] || continue
			printf '\n--- last lines of %s ---\n' "$(basename "$log")" >&2
			tail -n 20 "$log" >&2
		done
	fi
	# Newest first: Caddy before the services behind it.
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		kill "${PIDS[i]}" 2>/dev/null || true
	done
	# Bounded: whatever has not stopped after 5s is killed.
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$WORK"
	exit "$status"
}
trap cleanup EXIT
# Ctrl-C: leave through the EXIT trap, with the conventional status.
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: run CMD in the background, output in $WORK/NAME.log.
start() {
	local name=$1
	shift
	"$@" >"$WORK/$name.log" 2>&1 &
	PIDS+=($!)
}

# wait_for NAME URL: poll URL until it answers any HTTP status (bounded),
# failing early if the process died.
wait_for() {
	local name=$1 url=$2 pid=${PIDS[-1]} code
	for _ in $(seq 100); do
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
		[[ $code != 000 ]] && return 0
		kill -0 "$pid" 2>/dev/null || fail "$name exited (its log follows)"
		sleep 0.1
	done
	fail "$name did not answer on $url within 10s"
}

# A port someone else already serves would make the readiness checks pass
# against the wrong program.
PORTS=("$S3_PORT" "$API_PORT" "$CADDY_PORT" "$ADMIN_PORT")
[[ $MODE == fleet ]] && PORTS=("$S3_PORT" "$API_PORT" "$REDIS_PORT" "$NODE_A_PORT" "$NODE_B_PORT" "$NODE_A_ADMIN" "$NODE_B_ADMIN")
for port in "${PORTS[@]}"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "port $port on 127.0.0.1 is already in use; stop what uses it first" >&2
		exit 1
	fi
done

# --- show helpers ------------------------------------------------------------

# status_of ARGS...: print only the HTTP status of a request to Caddy.
status_of() { curl -sS -o /dev/null -w '%{http_code}' "$@"; }

# api_lookups ID: how many times the metadata API was asked about ID.
api_lookups() { grep -c "GET /v1/exports/$1 -> " "$WORK/demo-api.log" || true; }

# --- fleet mode --------------------------------------------------------------

# fleet_demo starts redis-server and two Caddy nodes sharing it, and shows a
# shared hit and a DELETE on one node taking effect on the other.
fleet_demo() {
	local caddyfile=$WORK/Caddyfile.fleet
	# One Caddyfile for both nodes: {$NODE_PORT} and {$NODE_ADMIN} are read
	# when the file is parsed, {env.*} when the handler is provisioned.
	cat >"$caddyfile" <<'CADDYFILE'
{
	default_bind 127.0.0.1
	auto_https off
	admin localhost:{$NODE_ADMIN}
	persist_config off
}

:{$NODE_PORT} {
	export_download {
		upstream http://127.0.0.1:9080
		key_prefixes hb_live_ hb_test_
		bucket {env.S3_BUCKET}
		object_key exports/{export.project_id}/{id}.csv
		endpoint {env.S3_ENDPOINT}
		path_style
		access_key_id {env.S3_ACCESS_KEY_ID}
		secret_access_key {env.S3_SECRET_ACCESS_KEY}
		# Shared decisions and invalidations: every node has the same block.
		fleet {
			redis {env.FLEET_REDIS}
			# The HMAC key of the fleet, at least 32 bytes, the same on every node.
			secret {env.FLEET_SECRET}
		}
	}
	reverse_proxy 127.0.0.1:9080
}
CADDYFILE

	say "Starting redis-server on 127.0.0.1:$REDIS_PORT (no persistence)"
	start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK"
	local i
	for i in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break
		kill -0 "${PIDS[-1]}" 2>/dev/null || fail "redis-server exited (its log follows)"
		sleep 0.1
	done

	export FLEET_REDIS=127.0.0.1:$REDIS_PORT
	# A throwaway secret for the demo; a real fleet reads it from a file or
	# a secret store, e.g. {file./run/secrets/fleet_secret}.
	FLEET_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
	export FLEET_SECRET
	say "Starting Caddy node A on $NODE_A and node B on $NODE_B, with this fleet block"
	sed -n '/fleet {/,/^\t\t}/p' "$caddyfile"
	start caddy-a env NODE_PORT=$NODE_A_PORT NODE_ADMIN=$NODE_A_ADMIN bin/caddy run --config "$caddyfile" --adapter caddyfile
	wait_for "caddy node A" "$NODE_A/v1/health"
	start caddy-b env NODE_PORT=$NODE_B_PORT NODE_ADMIN=$NODE_B_ADMIN bin/caddy run --config "$caddyfile" --adapter caddyfile
	wait_for "caddy node B" "$NODE_B/v1/health"

	# cache_status NODE ID [KEY]: the status and Cache-Status of a download.
	cache_status() {
		local hdrs
		hdrs=$(show curl -sS -o /dev/null -D - -H "${3:-$ALICE}" "$1/v1/exports/$2/download" | tr -d '\r')
		awk 'NR == 1 || tolower($1) == "cache-status:" || tolower($1) == "location:" { print "  " substr($0, 1, 110) }' <<<"$hdrs"
		STATUS=$(awk 'NR == 1 { print $2 }' <<<"$hdrs")
		CACHE_STATUS=$(awk 'tolower($1) == "cache-status:" { sub(/^[^:]*: */, ""); print }' <<<"$hdrs")
	}

	say "Node A: first download of an export. A asks the API and shares the decision"
	cache_status "$NODE_A" "$ID_COMPLETED"
	[[ $STATUS == 302 ]] || fail "node A: expected 302, got $STATUS"
	[[ $CACHE_STATUS == "export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored" ]] ||
		fail "node A: unexpected Cache-Status '$CACHE_STATUS'"

	say "Node B never saw it: the shared decision answers, the API is not asked"
	cache_status "$NODE_B" "$ID_COMPLETED"
	[[ $STATUS == 302 ]] || fail "node B: expected 302, got $STATUS"
	[[ $CACHE_STATUS == "export_download_fleet; hit, export_download; fwd=miss; stored" ]] ||
		fail "node B: expected a shared hit, got Cache-Status '$CACHE_STATUS'"
	cache_status "$NODE_B" "$ID_COMPLETED"
	[[ $CACHE_STATUS == "export_download; hit" ]] || fail "node B, again: expected a local hit, got '$CACHE_STATUS'"
	lookups=$(api_lookups "$ID_COMPLETED")
	echo "(the metadata API was asked about this export $lookups time(s) for three downloads on two nodes)"
	[[ $lookups -eq 1 ]] || fail "expected 1 metadata lookup, got $lookups"
	show curl -sS -L -H "$ALICE" "$NODE_B/v1/exports/$ID_COMPLETED/download" >"$WORK/fleet-download.csv"
	bin/demo-api -csv "$ID_COMPLETED" >"$WORK/expected.csv"
	cmp -s "$WORK/fleet-download.csv" "$WORK/expected.csv" || fail "the CSV downloaded through node B differs"
	echo "(the CSV downloaded through node B is the one uploaded)"

	say "Both nodes cache another export, then a DELETE goes through node A"
	cache_status "$NODE_A" "$ID_DISPOSABLE"
	cache_status "$NODE_B" "$ID_DISPOSABLE"
	[[ $STATUS == 302 ]] || fail "node B: expected 302 before the DELETE, got $STATUS"
	show curl -sS -o /dev/null -w '  HTTP %{http_code}\n' -X DELETE -H "$ALICE" "$NODE_A/v1/exports/$ID_DISPOSABLE"

	say "Node B no longer answers from its cache: the app says the export is gone"
	# Polled, so that the first answer after the DELETE is the one shown.
	local start_ns elapsed_ms hdrs
	start_ns=$(date +%s%N)
	echo "\$ curl -sS -o /dev/null -D - -H '$ALICE' $NODE_B/v1/exports/$ID_DISPOSABLE/download"
	for i in $(seq 100); do
		hdrs=$(curl -sS -o /dev/null -D - -H "$ALICE" "$NODE_B/v1/exports/$ID_DISPOSABLE/download" | tr -d '\r')
		[[ $(awk 'NR == 1 { print $2 }' <<<"$hdrs") == 404 ]] && break
		sleep 0.02
	done
	elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
	awk 'NR == 1 || tolower($1) == "cache-status:" { print "  " $0 }' <<<"$hdrs"
	[[ $(awk 'NR == 1 { print $2 }' <<<"$hdrs") == 404 ]] || fail "node B still answers from its cache 2s after the DELETE"
	echo "(node B's answer changed $elapsed_ms ms after the DELETE's 204, in $i request(s); the time includes starting curl)"

	say "Node B's fleet metrics"
	show curl -sS "http://localhost:$NODE_B_ADMIN/metrics" | grep -E '^caddy_export_download_fleet_(lookups_total|invalidations_total|up)' || true

	if command -v redis-cli >/dev/null; then
		say "What Redis holds: HMAC-named keys under the prefix, no API key"
		show redis-cli -p "$REDIS_PORT" --scan --pattern 'export_download:*' | sort | sed 's/^/  /'
		if redis-cli -p "$REDIS_PORT" --scan --pattern '*' | grep -q 'hb_test_'; then
			fail "an API key appears in a Redis key name"
		fi
	fi

	say "All fleet checks passed"
	echo "Node A:       $NODE_A   (admin and /metrics: http://localhost:$NODE_A_ADMIN/metrics)"
	echo "Node B:       $NODE_B   (admin and /metrics: http://localhost:$NODE_B_ADMIN/metrics)"
	echo "Redis:        127.0.0.1:$REDIS_PORT"
	echo "metadata API: http://127.0.0.1:$API_PORT"
	echo "S3:           $S3_ENDPOINT"
	echo "Keys:         hb_test_demo_alice (owns every export), hb_test_demo_bob (owns none)"
	echo "Exports:      completed $ID_COMPLETED (the shared hit)"
	echo "              deleted through node A $ID_DISPOSABLE"
	echo "              pending $ID_PENDING, processing $ID_PROCESSING, failed $ID_FAILED"
	echo "              expired $ID_EXPIRED, completed past expires_at $ID_PAST_EXPIRES_AT"
}

# --- build -------------------------------------------------------------------

say "Building bin/caddy and bin/demo-api"
go build -o bin/caddy ./cmd/caddy
go build -o bin/demo-api ./cmd/demo-api

VERSITYGW=$(command -v versitygw || true)
if [[ -z $VERSITYGW ]]; then
	GOBIN_DIR=$(go env GOBIN)
	[[ -n $GOBIN_DIR ]] || GOBIN_DIR=$(go env GOPATH | cut -d: -f1)/bin
	VERSITYGW=$GOBIN_DIR/versitygw
	if [[ ! -x $VERSITYGW ]]; then
		say "Installing versitygw ($VERSITYGW_PKG)"
		go install "$VERSITYGW_PKG"
	fi
fi

# --- start -------------------------------------------------------------------

say "Starting versitygw (S3) on $S3_ENDPOINT"
mkdir "$WORK/s3"
# The root keys go in the environment, not on the command line, where any
# local user could read them in the process list.
start versitygw env ROOT_ACCESS_KEY="$S3_ACCESS_KEY_ID" ROOT_SECRET_KEY="$S3_SECRET_ACCESS_KEY" \
	"$VERSITYGW" --port "127.0.0.1:$S3_PORT" --region "$S3_REGION" posix "$WORK/s3"
# An anonymous request gets 403, which proves it is serving.
wait_for versitygw "$S3_ENDPOINT/"

say "Starting the demo metadata API on http://127.0.0.1:$API_PORT"
start demo-api bin/demo-api -listen "127.0.0.1:$API_PORT"
wait_for demo-api "http://127.0.0.1:$API_PORT/v1/health"

say "Uploading the demo CSVs to s3://$S3_BUCKET"
bin/demo-api -seed

if [[ $MODE == fleet ]]; then
	fleet_demo
	if [[ ${DEMO_EXIT:-0} == 1 ]]; then
		exit 0
	fi
	echo
	echo "Running; press Ctrl-C to stop everything."
	wait
fi

say "Starting Caddy with Caddyfile.example on $BASE"
start caddy bin/caddy run --config Caddyfile.example --adapter caddyfile
# /v1/health is not the handler's: answered through reverse_proxy.
wait_for caddy "$BASE/v1/health"

# --- show --------------------------------------------------------------------


say "Download a completed export (302 to a presigned S3 URL, followed by curl -L)"
show curl -sS -L -H "$ALICE" "$BASE/v1/exports/$ID_COMPLETED/download" | tee "$WORK/download.csv"
bin/demo-api -csv "$ID_COMPLETED" >"$WORK/expected.csv"
cmp -s "$WORK/download.csv" "$WORK/expected.csv" ||
	fail "the downloaded CSV differs from the one uploaded"

say "The same download again, without -L: the answer comes from Caddy's cache"
show curl -sS -i -H "$ALICE" "$BASE/v1/exports/$ID_COMPLETED/download" | tee "$WORK/redirect.txt"
grep -q '^HTTP/[0-9.]* 302' "$WORK/redirect.txt" || fail "expected 302 Found"
grep -qi '^Cache-Status: export_download; hit' "$WORK/redirect.txt" ||
	fail "expected Cache-Status: export_download; hit on the second request"
lookups=$(api_lookups "$ID_COMPLETED")
echo "(the metadata API was asked about this export $lookups time(s) for two downloads)"
[[ $lookups -eq 1 ]] || fail "expected 1 metadata lookup, got $lookups"

say "An export that is not ready: the API's error envelope, from the edge"
show curl -sS -i -H "$ALICE" "$BASE/v1/exports/$ID_PENDING/download" | tee "$WORK/pending.txt"
echo
grep -q '^HTTP/[0-9.]* 400' "$WORK/pending.txt" || fail "expected 400 for a pending export"
grep -q '"code":"EXPORT_NOT_READY"' "$WORK/pending.txt" || fail "expected error.code EXPORT_NOT_READY"
grep -qi '^Content-Type: application/json' "$WORK/pending.txt" || fail "expected a JSON error body"

say "Every case, by status code"
check() {
	local want=$1 what=$2 got
	shift 2
	got=$(status_of "$@")
	printf '  %-48s %s\n' "$what" "$got"
	[[ $got == "$want" ]] || fail "$what: expected $want, got $got"
}
check 302 "completed" -H "$ALICE" "$BASE/v1/exports/$ID_COMPLETED/download"
check 400 "pending" -H "$ALICE" "$BASE/v1/exports/$ID_PENDING/download"
check 400 "processing" -H "$ALICE" "$BASE/v1/exports/$ID_PROCESSING/download"
check 400 "failed" -H "$ALICE" "$BASE/v1/exports/$ID_FAILED/download"
check 410 "expired" -H "$ALICE" "$BASE/v1/exports/$ID_EXPIRED/download"
check 410 "completed, expires_at past" -H "$ALICE" "$BASE/v1/exports/$ID_PAST_EXPIRES_AT/download"
check 404 "another key's export (bob)" -H "$BOB" "$BASE/v1/exports/$ID_COMPLETED/download"
check 401 "no API key" "$BASE/v1/exports/$ID_COMPLETED/download"
check 401 "unknown key prefix" -H 'Authorization: Bearer sk_demo' "$BASE/v1/exports/$ID_COMPLETED/download"
check 400 "id not a UUID" -H "$ALICE" "$BASE/v1/exports/not-a-uuid/download"
check 200 "other paths pass through (GET /v1/exports)" -H "$ALICE" "$BASE/v1/exports"

say "DELETE through Caddy drops the cached answer (invalidate_path)"
check 302 "download (cached now)" -H "$ALICE" "$BASE/v1/exports/$ID_DISPOSABLE/download"
check 204 "DELETE /v1/exports/{id} (to the app)" -X DELETE -H "$ALICE" "$BASE/v1/exports/$ID_DISPOSABLE"
check 404 "download after the DELETE" -H "$ALICE" "$BASE/v1/exports/$ID_DISPOSABLE/download"

say "Revoke a key in one command: the app tags each answer with the key's id"
show curl -sS -o /dev/null -D - -H "$LEAKED" "http://127.0.0.1:$API_PORT/v1/exports/$ID_COMPLETED" |
	tr -d '\r' | awk 'tolower($1) == "surrogate-key:" { print "  " $0 }'
echo "(the app's answer, asked directly; Caddy keeps the tags with the cached answer and never forwards the header)"
check 302 "download with Alice's second key (cached now)" -H "$LEAKED" "$BASE/v1/exports/$ID_COMPLETED/download"
check 204 "app revokes it: DELETE /v1/api_keys/$LEAKED_ID" -X DELETE -H "$ALICE" "$BASE/v1/api_keys/$LEAKED_ID"
check 302 "the revoked key, answered from the edge's cache" -H "$LEAKED" "$BASE/v1/exports/$ID_COMPLETED/download"
echo "(the edge cannot know until it is told: the operator purges the key's tag through Caddy's admin API)"
purged=$(show bin/caddy export-download purge --surrogate-key "$LEAKED_ID" --address "localhost:$ADMIN_PORT")
echo "  $purged"
[[ $purged == "dropped 1 entry in 1 cache; fleet: off (this node only)" ]] ||
	fail "purge --surrogate-key $LEAKED_ID: expected one entry dropped, got '$purged'"
check 401 "the revoked key after the purge" -H "$LEAKED" "$BASE/v1/exports/$ID_COMPLETED/download"
check 302 "Alice's other key still downloads" -H "$ALICE" "$BASE/v1/exports/$ID_COMPLETED/download"

say "All checks passed"
echo "Caddy:        $BASE   (admin and /metrics: http://localhost:$ADMIN_PORT/metrics)"
echo "metadata API: http://127.0.0.1:$API_PORT"
echo "S3:           $S3_ENDPOINT"
echo "Keys:         hb_test_demo_alice (owns every export), hb_test_demo_bob (owns none),"
echo "              hb_test_demo_leaked (Alice's second key, revoked by the demo)"
echo "Exports:      completed $ID_COMPLETED"
echo "              pending $ID_PENDING, processing $ID_PROCESSING, failed $ID_FAILED"
echo "              expired $ID_EXPIRED, completed past expires_at $ID_PAST_EXPIRES_AT"

if [[ ${DEMO_EXIT:-0} == 1 ]]; then
	exit 0
fi
echo
echo "Running; press Ctrl-C to stop everything."
# wait returns when a trapped signal arrives, so Ctrl-C reaches the trap.
wait
