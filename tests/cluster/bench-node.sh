#!/usr/bin/env bash
# Benchmarks of the local cluster's real node, for `make bench` (tests/scripts/bench.sh):
# writes the JSON object of figures to $BENCH_OUT (default target/bench/cluster_node.json).
#   cluster_up_s       `cluster.sh up` from fresh state, binaries built and images loaded
#                      once (only measured when the cluster is down when this starts; it is
#                      left as it was found)
#   pod_start_ms       kubectl create of a pod of mesh/app on the real node to its Ready
#                      condition (median of 7, with min and max beside it)
#   node_rss_kb        kubelet + containerd resident memory after those pods
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${BENCH_OUT:-$ROOT/target/bench/cluster_node.json}"
CLUSTER="$HERE/cluster.sh"
mkdir -p "$(dirname "$OUT")"
log() { echo "bench-node: $*" >&2; }
now_ms() { date +%s%3N; }

up_s=null
was_up=1
if ! bash "$CLUSTER" status >/dev/null 2>&1; then
	was_up=0
	# A first `up` builds images and loads them; the figure is for a fresh state with all
	# of that done, so bring it up once, then down and up again, timed.
	bash "$CLUSTER" up >&2
	bash "$CLUSTER" down >&2
	t0=$(now_ms)
	bash "$CLUSTER" up >&2
	up_s=$(awk -v ms=$(($(now_ms) - t0)) 'BEGIN { printf "%.1f", ms / 1000 }')
	log "cluster_up_s $up_s"
fi
[[ -f $ROOT/target/cluster/real-node ]] || { log "the cluster has no real node"; exit 1; }
export KUBECONFIG="$ROOT/target/cluster/kubeconfig"
VERSION="$(awk -F'"' '/^version *=/ { print $2; exit }' "$ROOT/Cargo.toml")"
NS="bench-node-$$"
kubectl create namespace "$NS" >/dev/null
trap 'kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true' EXIT

times=()
for i in 1 2 3 4 5 6 7; do
	t0=$(now_ms)
	kubectl -n "$NS" create -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: start-$i}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: app
    image: docker.io/mesh/app:$VERSION
    imagePullPolicy: Never
    env: [{name: SERVICE_NAME, value: ratings}, {name: SERVICE_VERSION, value: v1}]
    readinessProbe: {httpGet: {path: /health, port: 9080}, periodSeconds: 1}
YAML
	kubectl -n "$NS" wait --for=condition=Ready "pod/start-$i" --timeout=120s >/dev/null
	times+=($(($(now_ms) - t0)))
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
median=${sorted[3]}
log "pod_start_ms ${times[*]} (median $median)"

rss=0
for c in kubelet containerd; do
	pid="$(cat "$ROOT/target/cluster/$c.pid")"
	kb="$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")"
	rss=$((rss + kb))
done
log "node_rss_kb $rss (kubelet + containerd)"

cat >"$OUT" <<JSON
{
  "cluster_up_s": $up_s,
  "pod_start_ms": $median,
  "pod_start_ms_min": ${sorted[0]},
  "pod_start_ms_max": ${sorted[6]},
  "node_rss_kb": $rss
}
JSON
kubectl delete namespace "$NS" --wait=true --timeout=60s >/dev/null 2>&1 || true
trap - EXIT
((was_up)) || bash "$CLUSTER" down >&2
