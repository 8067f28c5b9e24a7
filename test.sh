#!/usr/bin/env bash
# test.sh: the README's test command. Installs what the tests need and is
# missing, then runs `go test -race -count=1 ./...`.
#
#   ./test.sh                          # every package
#   ./test.sh ./internal/cache/        # only that package
#   ./test.sh -run TestCacheHit .      # any go test flags and packages
#
# It installs:
#   - versitygw v1.8.0 (the S3 server the end-to-end tests start) with
#     `go install` into GOBIN (default: GOPATH/bin), which it puts first on
#     PATH for the tests;
#   - redis-server, redis-cli (the Cluster and Sentinel tests create their
#     deployments with it), promtool, wrk, systemd-analyze, gnuplot, curl
#     and a C compiler for -race from Debian's packages, when run as root. As another
#     user it stops, before any test, with one line naming what is missing
#     and the apt-get command that installs it.
# It starts no server itself (the tests start theirs on random loopback
# ports and stop them), and packages installed here do not start their
# services. It ends with go test's per-package lines and a count; with
# CI=true a skipped test, or no test at all, fails the run.
set -euo pipefail
cd "$(dirname "$0")"

readonly VERSITYGW_MODULE=github.com/versity/versitygw
readonly VERSITYGW_VERSION=v1.8.0

say() { printf '==> %s\n' "$*"; }
die() {
	echo "test.sh: $*" >&2
	exit 1
}

command -v go >/dev/null || die "needs Go (https://go.dev/doc/install), version as in go.mod"

# --- Debian packages ----------------------------------------------------------

# tool:package pairs. gcc (with libc6-dev) is what -race needs: it uses cgo.
readonly TOOLS=(
	redis-server:redis-server
	redis-cli:redis-tools
	promtool:prometheus
	wrk:wrk
	systemd-analyze:systemd
	gnuplot:gnuplot-nox
	curl:curl
	"$(go env CC | cut -d' ' -f1):gcc"
)
missing_tools=() missing_pkgs=()
for pair in "${TOOLS[@]}"; do
	tool=${pair%%:*} pkg=${pair#*:}
	command -v "$tool" >/dev/null && continue
	missing_tools+=("$tool")
	missing_pkgs+=("$pkg")
	[[ $pkg == gcc ]] && missing_pkgs+=(libc6-dev)
done

if ((${#missing_tools[@]} > 0)); then
	if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
		names=$(IFS=,; echo "${missing_tools[*]}")
		die "missing ${names//,/, }; install with: sudo apt-get install -y --no-install-recommends ${missing_pkgs[*]} (or run ./test.sh as root on Debian)"
	fi
	say "Installing ${missing_pkgs[*]} (for ${missing_tools[*]})"
	# The redis-server and prometheus packages would start their services;
	# the tests start their own servers, so none may be left running. A
	# policy-rc.d that answers 101 tells invoke-rc.d and deb-systemd-invoke
	# not to start anything; an existing one is left as it is.
	policy=/usr/sbin/policy-rc.d
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\n# written by test.sh while it installs packages\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${missing_pkgs[@]}" >/dev/null
	if [[ -O $policy ]] && grep -q 'written by test.sh' "$policy" 2>/dev/null; then
		rm -f "$policy"
		trap - EXIT
	fi
	for tool in "${missing_tools[@]}"; do
		command -v "$tool" >/dev/null || die "installed its package, but $tool is still not on PATH"
	done
fi

# --- versitygw ----------------------------------------------------------------

gobin=$(go env GOBIN)
[[ -n $gobin ]] || gobin=$(go env GOPATH | cut -d: -f1)/bin
export PATH="$gobin:$PATH"

# The binary's --version says "git"; the module version is in its build info.
has_versitygw() {
	local bin
	bin=$(command -v versitygw) || return 1
	go version -m "$bin" 2>/dev/null |
		grep -qE "^\s+mod\s+$VERSITYGW_MODULE\s+$VERSITYGW_VERSION(\s|$)"
}
if ! has_versitygw; then
	say "Installing versitygw $VERSITYGW_VERSION into $gobin"
	go install "$VERSITYGW_MODULE/cmd/versitygw@$VERSITYGW_VERSION"
	hash -r
	has_versitygw || die "installed versitygw $VERSITYGW_VERSION into $gobin, but $(command -v versitygw || echo versitygw) on PATH is not that version"
fi

# --- tests --------------------------------------------------------------------

# Packages default to ./... when no argument names one.
args=("$@")
has_pkg=0
for arg in "${args[@]}"; do
	[[ $arg == . || $arg == ./* || $arg == ../* || $arg == github.com/* ]] && has_pkg=1
done
((has_pkg)) || args+=(./...)

say "go test -race -count=1 ${args[*]}"
log=$(mktemp "${TMPDIR:-/tmp}/test.sh.XXXXXX")
trap 'rm -f "$log"' EXIT

# -v gives each test's result, for the count and the skip check. What is
# printed is what a plain `go test` prints: a line per package, and the
# output of failing tests only (each output line is attributed to the test
# named by the latest "=== RUN/CONT/NAME" header before it).
set +e
go test -race -count=1 -v "${args[@]}" 2>&1 | tee "$log" | awk '
	# Build and vet errors: "# package" and the lines after it.
	/^# / { building = 1 }
	building && !/^(=== |ok[ \t]|FAIL|\?[ \t])/ { print; next }
	{ building = 0 }
	/^=== (RUN|CONT|NAME|PAUSE) / { cur = $3; next }
	/^ *--- (PASS|FAIL|SKIP): / {
		name = $3
		if ($2 == "FAIL:") failout = failout $0 "\n" out[name]
		if ($2 == "SKIP:") skipout = skipout $0 "\n" out[name]
		delete out[name]
		if (name == cur) cur = ""
		next
	}
	/^(ok|FAIL|\?)[ \t]+[^ \t]/ {
		printf "%s", skipout
		if ($1 == "FAIL") printf "%s", failout
		print
		failout = ""; skipout = ""; cur = ""; delete out
		next
	}
	/^(PASS|FAIL)$/ { next }
	# Benchmarks, when asked for with -bench, as go test prints them.
	/^(Benchmark|goos: |goarch: |pkg: |cpu: )/ { print; next }
	# A panic, or a race report that may be about a test other than the
	# one named last: shown when the package fails.
	/^(panic|fatal error): / { cur = "" }
	/^==================$/ { inrace = !inrace; failout = failout $0 "\n"; next }
	inrace || cur == "" { failout = failout $0 "\n"; next }
	{ out[cur] = out[cur] $0 "\n" }
	END { printf "%s%s", skipout, failout }
'
status=${PIPESTATUS[0]}
set -e

passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)
echo "$passed passed, $failed failed, $skipped skipped"

if [[ ${CI:-} == true ]]; then
	# CI runs every test: a skip is a missing prerequisite or a forgotten t.Skip.
	if ((skipped > 0)); then
		echo "test.sh: tests were skipped; CI must run every test" >&2
		status=1
	fi
	if ((passed == 0 && status == 0)); then
		echo "test.sh: no test ran" >&2
		status=1
	fi
fi
exit "$status"
