#!/usr/bin/env bash
# Benchmarks of the demo (tests/cluster/demo.sh) on the running local cluster with its real
# node, for `make bench`: writes the JSON object of figures to $BENCH_OUT (default
# target/bench/cluster_demo.json).
#   demo_install_to_ready_s     demo.sh from no control plane: kubectl apply of the install,
#                               injection, bookinfo, until the ingress serves /productpage
#   route_change_to_traffic_ms  kubectl apply of a VirtualService moving reviews to another
#                               version, to the first request through the ingress answered
#                               by it (median of 6, alternating v3 and v1; min and max beside)
#   mesh_p50_p99_overhead_us    latency productpage -> reviews (GET /health, which calls
#                               nobody; a new connection per call, as the app makes them)
#                               with sidecars minus the same pods without (bookinfo.yaml in a
#                               namespace not labelled for injection): p50 and p99 of 1000
#                               calls each, measured in productpage's container, the two sides
#                               in turn after a warm-up; the raw figures beside. The meshed
#                               call crosses both sidecars and Mixer's check at reviews.
# The control plane and the namespace are removed afterwards.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${BENCH_OUT:-$ROOT/target/bench/cluster_demo.json}"
mkdir -p "$(dirname "$OUT")"
log() { echo "bench-demo: $*" >&2; }
now_ms() { date +%s%3N; }
INGRESS="http://${MESH_CLUSTER_NODE_IP:-10.250.0.2}:31380"

bash "$HERE/cluster.sh" status >/dev/null || { log "the cluster is not up"; exit 1; }
[[ -f $ROOT/target/cluster/real-node ]] || { log "the cluster has no real node"; exit 1; }
export KUBECONFIG="$ROOT/target/cluster/kubeconfig"
NS="bench-demo-$$"
PLAIN="bench-plain-$$"
cleanup() {
	kubectl delete namespace "$NS" "$PLAIN" --wait=false >/dev/null 2>&1 || true
	kubectl delete -f "$ROOT/manifests/install.yaml" --ignore-not-found --wait=true --timeout=180s >/dev/null 2>&1 || true
}
trap cleanup EXIT

# From no control plane.
kubectl delete -f "$ROOT/manifests/install.yaml" --ignore-not-found --wait=true --timeout=180s >/dev/null 2>&1 || true
kubectl wait --for=delete namespace/istio-system --timeout=180s >/dev/null 2>&1 || true
kubectl create namespace "$NS" >/dev/null
t0=$(now_ms)
DEMO_NAMESPACE="$NS" bash "$HERE/demo.sh" >/dev/null 2>&1
install_s=$(awk -v ms=$(($(now_ms) - t0)) 'BEGIN { printf "%.1f", ms / 1000 }')
log "demo_install_to_ready_s $install_s"

# Route changes: reviews all to one version, then all to another, timed to the first page
# that shows the new one.
route() { # version
	kubectl -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: $1}
YAML
}
kubectl -n "$NS" apply -f "$ROOT/manifests/bookinfo/destination-rule-all.yaml" >/dev/null
first_page_of() { # version: ms until a page shows it
	python3 - "$INGRESS/productpage" "$1" <<'PY'
import json, sys, time, urllib.request
url, want = sys.argv[1], sys.argv[2]
deadline = time.time() + 60
while time.time() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            if json.load(r).get("reviews", {}).get("version") == want:
                sys.exit(0)
    except Exception:
        pass
sys.exit(1)
PY
}
route v1
first_page_of v1 || { log "reviews never moved to v1"; exit 1; }
sleep 2
times=()
for v in v3 v1 v3 v1 v3 v1; do
	t0=$(now_ms)
	route "$v"
	first_page_of "$v" || { log "reviews never moved to $v"; exit 1; }
	times+=($(($(now_ms) - t0)))
	sleep 1
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
median=$(((sorted[2] + sorted[3]) / 2))
log "route_change_to_traffic_ms ${times[*]} (median $median)"

# The mesh's latency: the same call with and without sidecars, in turn.
kubectl create namespace "$PLAIN" >/dev/null
kubectl -n "$PLAIN" apply -f "$ROOT/manifests/bookinfo/bookinfo.yaml" >/dev/null
kubectl -n "$PLAIN" wait --for=condition=Available deployment --all --timeout=180s >/dev/null
calls() { # namespace, count: the latency JSON line of productpage's calls to reviews
	kubectl -n "$1" exec deploy/productpage-v1 -c productpage -- \
		mesh-app get http://reviews:9080/health --count "$2" --latency
}
calls "$NS" 100 >/dev/null && calls "$PLAIN" 100 >/dev/null
meshed="$(calls "$NS" 1000)"
plain="$(calls "$PLAIN" 1000)"
log "with sidecars $meshed; without $plain"
overhead="$(python3 - "$meshed" "$plain" <<'PY'
import json, sys
m, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert m["ok"] == m["count"] and p["ok"] == p["count"], (m, p)
print(json.dumps({
    "mesh_p50_p99_overhead_us": {"p50": m["p50_us"] - p["p50_us"], "p99": m["p99_us"] - p["p99_us"]},
    "mesh_latency_us": {"p50": m["p50_us"], "p99": m["p99_us"]},
    "no_mesh_latency_us": {"p50": p["p50_us"], "p99": p["p99_us"]},
}))
PY
)"
log "$overhead"

python3 - "$OUT" "$overhead" <<PY
import json, sys
out = {
    "demo_install_to_ready_s": $install_s,
    "route_change_to_traffic_ms": $median,
    "route_change_to_traffic_ms_min": ${sorted[0]},
    "route_change_to_traffic_ms_max": ${sorted[5]},
}
out.update(json.loads(sys.argv[2]))
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
PY
cat "$OUT"
