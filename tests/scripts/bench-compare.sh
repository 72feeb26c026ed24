#!/usr/bin/env bash
# `make bench-compare`: our components against their peers, in the same run, with the same
# clients and the same generated inputs. Not part of `make test` or `make bench`.
#
# Each peer is built from the Go module proxy from a wrapper module under tests/peers/<name>/
# (go.mod + go.sum pin the version; only the wrapper lives in git) into
# ${MESH_CACHE:-~/.cache/mesh}/peers/<binary>, skipped when a stamp of the wrapper module, the
# Go version and the flags matches. Each comparison is a `cargo bench` writing
# target/bench/compare_<name>.json; at the end (also when a section fails) they are merged into
# target/bench/compare.json, and into target/bench/report.json beside `make bench`'s figures,
# and tests/scripts/plot.py draws the curves. A figure is
#   {"ours": x, "theirs": y, "ratio": y / x, "unit": "..."}
# or {"skipped": "reason"} when it could not be measured.
#
# Sections are independent: a peer that fails to build or run is reported and the others go
# on. Add a peer by appending a section at the end (build_peer, then run with its binary in
# the environment).
#
# usage: bench-compare.sh [section...]   (default: every section; names as in `section`)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/target/bench"
PEERS="$ROOT/tests/peers"
PEER_BIN="${MESH_CACHE:-$HOME/.cache/mesh}/peers"
mkdir -p "$OUT" "$PEER_BIN"
cd "$ROOT"
ONLY=("$@")
FAILED=()

log() { printf '[bench-compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# section NAME: true when NAME is to run (no arguments: every section).
section() {
	local s
	[[ ${#ONLY[@]} == 0 ]] && { log "== $1"; return 0; }
	for s in "${ONLY[@]}"; do [[ $s == "$1" ]] && { log "== $1"; return 0; }; done
	return 1
}

# build_peer WRAPPER BINARY PACKAGE [LDFLAGS]: builds PACKAGE of tests/peers/WRAPPER into
# $PEER_BIN/BINARY and prints its path; fails (with the build's error on stderr) when it cannot.
build_peer() {
	local dir="$PEERS/$1" bin="$PEER_BIN/$2" pkg=$3 ldflags=${4:--s -w} stamp t0
	stamp="$({
		printf '%s %s\n' "$pkg" "$ldflags"
		go env GOVERSION GOOS GOARCH
		cat "$dir/go.mod" "$dir/go.sum" "$dir"/*.go 2>/dev/null
	} | sha256sum | cut -c1-32)"
	if [[ -x $bin && -f $bin.stamp && "$(cat "$bin.stamp")" == "$stamp" ]]; then
		log "$2 is up to date"
		printf '%s\n' "$bin"
		return 0
	fi
	log "building $2 ($pkg) from $dir ..."
	t0=$SECONDS
	rm -f "$bin.stamp"
	if ! (cd "$dir" && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" \
		nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$bin.tmp" "$pkg" >&2); then
		log "ERROR: the build of $2 failed"
		return 1
	fi
	mv -f "$bin.tmp" "$bin"
	printf '%s\n' "$stamp" >"$bin.stamp"
	log "built $2 in $((SECONDS - t0))s"
	printf '%s\n' "$bin"
}

# run NAME PACKAGE BENCH: `cargo bench` writing target/bench/compare_NAME.json (with the peer's
# binary passed in the environment by the caller).
run() {
	rm -f "$OUT/compare_$1.json"
	BENCH_OUT="$OUT/compare_$1.json" cargo bench --locked -p "$2" --bench "$3" || {
		log "ERROR: comparison $1 failed"
		FAILED+=("$1")
		return 1
	}
}

# skipped NAME REASON: the comparison could not be made; says why in compare_NAME.json.
skipped() {
	log "SKIPPED $1: $2"
	FAILED+=("$1")
	python3 - "$OUT/compare_$1.json" "$1" "$2" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    json.dump({f"compare_{sys.argv[2]}": {"skipped": sys.argv[3]}}, f, indent=2)
PY
}

# Runs last, however the script ends: compare_*.json into compare.json and report.json, plots.
merge() {
	python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
compare = {}
for path in sorted(glob.glob(os.path.join(out, "compare_*.json"))):
    with open(path) as f:
        compare.update(json.load(f))
with open(os.path.join(out, "compare.json"), "w") as f:
    json.dump(compare, f, indent=2, sort_keys=True)
    f.write("\n")
report_path = os.path.join(out, "report.json")
report = {}
if os.path.exists(report_path):
    with open(report_path) as f:
        report = json.load(f)
report.update(compare)
with open(report_path, "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
    f.write("\n")
print(json.dumps(compare, indent=2, sort_keys=True))
PY
	python3 tests/scripts/plot.py "$OUT/compare.json" "$OUT" >&2
	if [[ ${#FAILED[@]} -gt 0 ]]; then
		log "not measured: ${FAILED[*]}"
	fi
}
trap merge EXIT

# === Pilot against go-control-plane's snapshot cache (the same resources, dumped by
# pilot/examples/xds_dump.rs, served by tests/peers/go-control-plane/main.go) ===
if section pilot_gcp; then
	if bin="$(build_peer go-control-plane gcp-server .)"; then
		GCP_BIN="$bin" run pilot_gcp pilot compare
	else
		skipped pilot_gcp "go-control-plane server could not be built (see the log above)"
	fi
fi

# === Pilot against istiod (pilot-discovery, file mode: the same meshgen mesh as YAML) ===
if section pilot_istiod; then
	if bin="$(build_peer istiod pilot-discovery istio.io/istio/pilot/cmd/pilot-discovery)"; then
		ISTIOD_BIN="$bin" COMPARE_PEER=istiod run pilot_istiod pilot compare
	else
		skipped pilot_istiod "istiod (pilot-discovery) could not be built (see the log above)"
	fi
fi

# === Further peers: append sections here ===

# === Mixer's rate limit service (memquota, redisquota) against envoyproxy/ratelimit, the same
# ShouldRateLimit client and descriptors, one redis-server of the bench's own on a free
# loopback port (mixer/benches/compare_ratelimit.rs). Its figures carry "speedup" instead of
# "ratio": above 1 when ours is better (ours / theirs for rps, theirs / ours for latency) ===
if section ratelimit; then
	if ! command -v redis-server >/dev/null; then
		skipped ratelimit "redis-server is not installed (make deps, or apt-get install redis-server)"
	elif bin="$(build_peer ratelimit ratelimit github.com/envoyproxy/ratelimit/src/service_cmd)"; then
		RATELIMIT_BIN="$bin" run ratelimit mixer compare_ratelimit
	else
		skipped ratelimit "envoyproxy/ratelimit could not be built (see the log above)"
	fi
fi
