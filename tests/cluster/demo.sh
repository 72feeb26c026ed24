#!/usr/bin/env bash
# `make demo-cluster`: the mesh on Kubernetes, step by step (README). Starts the local
# cluster with its real node (root), installs the control plane with `kubectl apply`,
# labels namespace default for sidecar injection, deploys bookinfo (manifests/bookinfo/)
# behind the ingress gateway, waits until it answers, and prints the URL and what to try
# next. The cluster stays up: `make cluster-down` stops it.
#
# The images must be built and loaded first (`make demo-cluster` does: `make images`, then
# `cluster.sh up` loads them into the node).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KUBECTL="${KUBECTL:-kubectl}"
NS="${DEMO_NAMESPACE:-default}"
TIMEOUT="${DEMO_TIMEOUT:-300}"
INGRESS="http://${MESH_CLUSTER_NODE_IP:-10.250.0.2}:31380"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'demo-cluster: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "the real node needs root (pods run in network namespaces this creates)"

step "the local Kubernetes, with a real node"
bash "$HERE/cluster.sh" up
KUBECONFIG="$(bash "$HERE/cluster.sh" kubeconfig)"
export KUBECONFIG
k() { "$KUBECTL" "$@"; }

step "the control plane: kubectl apply -f manifests/crds.yaml -f manifests/install.yaml"
# An earlier install still going away must be gone first (an apply into a terminating
# namespace is refused).
if [[ $(k get namespace istio-system -o 'jsonpath={.status.phase}' 2>/dev/null || true) == Terminating ]]; then
    k wait --for=delete namespace/istio-system --timeout=180s >/dev/null
fi
k apply -f "$ROOT/manifests/crds.yaml" -f "$ROOT/manifests/install.yaml" >/dev/null
k -n istio-system wait --for=condition=Available deployment --all --timeout="${TIMEOUT}s"
step "Mixer's default telemetry config: kubectl apply -f manifests/telemetry.yaml"
k apply -f "$ROOT/manifests/telemetry.yaml" >/dev/null

step "sidecar injection for namespace $NS"
k label namespace "$NS" istio-injection=enabled --overwrite

step "bookinfo, its subsets and the ingress route"
# The webhooks answer once Pilot has written their caBundles: retry a refused apply.
for i in $(seq 1 30); do
    if k -n "$NS" apply -f "$ROOT/manifests/bookinfo/bookinfo.yaml" \
        -f "$ROOT/manifests/bookinfo/destination-rule-all.yaml" \
        -f "$ROOT/manifests/bookinfo/bookinfo-gateway.yaml"; then
        break
    fi
    ((i < 30)) || die "kubectl apply of bookinfo kept failing"
    sleep 2
done
k -n "$NS" wait --for=condition=Available deployment --all --timeout="${TIMEOUT}s"

step "waiting for $INGRESS/productpage"
for i in $(seq 1 60); do
    code="$(curl -s -o /dev/null -w '%{http_code}' "$INGRESS/productpage" || true)"
    [[ $code == 200 ]] && break
    ((i < 60)) || die "the ingress answered $code, not 200 ($INGRESS/productpage)"
    sleep 1
done

cat <<MSG

bookinfo is up behind the ingress gateway:

  curl -s $INGRESS/productpage | jq .reviews.version     # v1, v2 or v3, in turn

Route it with YAML (namespace $NS):

  kubectl apply -f manifests/bookinfo/virtual-service-all-v1.yaml           # only v1
  kubectl apply -f manifests/bookinfo/virtual-service-reviews-test-v2.yaml  # jason on v2
  curl -s -H 'end-user: jason' $INGRESS/productpage | jq .reviews.version
  kubectl apply -f manifests/bookinfo/virtual-service-reviews-50-v3.yaml    # half v3

and look:

  export KUBECONFIG=$KUBECONFIG
  kubectl get pods -n $NS                     # two containers each: the app and istio-proxy
  pilot check --kubeconfig \$KUBECONFIG        # the control plane's health

make cluster-down stops everything.
MSG
