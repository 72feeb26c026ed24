#!/usr/bin/env bash
# `make bench`: runs every benchmark; each writes target/bench/<name>.json, and this merges them
# into target/bench/report.json (one object of named figures; a curve is an object with its
# points, which tests/scripts/plot.py draws as target/bench/<name>.svg). Benchmarks that need
# the local Kubernetes start it (tests/cluster/cluster.sh up) and leave it as they found it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/target/bench"
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.svg
cd "$ROOT"

run() { # name, package, bench
    echo "==> $1" >&2
    BENCH_OUT="$OUT/$1.json" cargo bench --locked -p "$2" --bench "$3"
}

run runtime mesh-runtime config_store
run pilot pilot xds
run pilot_authz pilot authz
run pilot_scale pilot scale || echo "pilot scale benchmark failed" >&2
run pilot_inject pilot inject
run pilot_agent pilot agent
run mixer mixer check
run mixer_scale mixer scale || echo "mixer scale benchmark failed" >&2
run mixer_graph mixer graph || echo "mixer graph benchmark failed" >&2
run citadel citadel csr
run citadel_scale citadel scale || echo "citadel scale benchmark failed" >&2
run authz_envoy mesh-tests authz_envoy

# The real node's figures (cluster up time, pod start, node memory); it measures `up` itself
# when the cluster is down, and leaves it as it found it.
echo "==> cluster_node" >&2
BENCH_OUT="$OUT/cluster_node.json" bash tests/cluster/bench-node.sh || echo "cluster node benchmark failed" >&2

# Secrets written to a real API server need the local cluster.
started_cluster=0
if ! bash tests/cluster/cluster.sh status >/dev/null 2>&1; then
    bash tests/cluster/cluster.sh up
    started_cluster=1
fi
run citadel_secrets citadel secrets || echo "citadel secrets benchmark failed" >&2
run pilot_k8s pilot k8s || echo "pilot k8s benchmark failed" >&2
echo "==> cluster_demo" >&2
BENCH_OUT="$OUT/cluster_demo.json" bash tests/cluster/bench-demo.sh || echo "cluster demo benchmark failed" >&2
if [ "$started_cluster" = 1 ]; then
    bash tests/cluster/cluster.sh down
fi

python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
report = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    if os.path.basename(path) == "report.json":
        continue
    with open(path) as f:
        report.update(json.load(f))
with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
    f.write("\n")
print(json.dumps(report, indent=2, sort_keys=True))
PY

python3 tests/scripts/plot.py "$OUT/report.json" "$OUT" >&2
