#!/usr/bin/env bash
# Benchmarks of the demo (tests/cluster/demo.sh) on the running local cluster with its real
# node, for `make bench`: writes the JSON object of figures to $BENCH_OUT (default
# target/bench/cluster_demo.json).
#   demo_install_to_ready_s     demo.sh from no control plane: kubectl apply of the install,
#                               injection, bookinfo, until the ingress serves /productpage
#   route_change_to_traffic_ms  kubectl apply of a VirtualService moving reviews to another
#                               version, to the first request through the ingress answered
#                               by it (median of 6, alternating v3 and v1; min and max beside)
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
cleanup() {
	kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
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

cat >"$OUT" <<JSON
{
  "demo_install_to_ready_s": $install_s,
  "route_change_to_traffic_ms": $median,
  "route_change_to_traffic_ms_min": ${sorted[0]},
  "route_change_to_traffic_ms_max": ${sorted[5]}
}
JSON
cat "$OUT"
