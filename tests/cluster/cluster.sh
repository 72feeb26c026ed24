#!/usr/bin/env bash
# Local Kubernetes test cluster for the mesh's integration tests: real etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler, kwok playing the
# kubelet of a fake node (pods are statuses on 127.1.x.x), and, as root, a real node
# (containerd, kubelet, kube-proxy, CNI, CoreDNS: node.sh) whose pods run.
# See README.md beside this file.
#
# usage: cluster.sh up|down|status|kubeconfig|guard|images|build
#   up          build the binaries if needed, start everything, wait until ready
#   down        stop what `up` started (by recorded pid) and remove the state dir
#   status      say whether the cluster is up (exit 0 if it is, 1 if not)
#   kubeconfig  print the path of the admin kubeconfig (exit 1 if there is none)
#   guard       print how many packets the egress guard dropped (0 unless something leaked)
#   images      load the images in target/images/ that changed into the real node
#   build       only build (or check) the binaries; extra args go to build.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
STATE="$REPO_ROOT/target/cluster"
BIN_DIR="${MESH_CACHE:-$HOME/.cache/mesh}/cluster/bin"
KUBECONFIG_OUT="$STATE/kubeconfig"
KUBECTL="${KUBECTL:-kubectl}"

# Ports: fixed but unusual, all on 127.0.0.1.
ETCD_CLIENT_PORT="${MESH_CLUSTER_ETCD_PORT:-23379}"
ETCD_PEER_PORT="${MESH_CLUSTER_ETCD_PEER_PORT:-23380}"
APISERVER_PORT="${MESH_CLUSTER_APISERVER_PORT:-26443}"
KCM_PORT="${MESH_CLUSTER_KCM_PORT:-26257}"
SCHEDULER_PORT="${MESH_CLUSTER_SCHEDULER_PORT:-26259}"
KWOK_PORT="${MESH_CLUSTER_KWOK_PORT:-26250}"
# Pods get their IPs from this range (real loopback addresses, so tests can
# bind servers on pod IPs). Service IPs are allocated from SERVICE_CIDR but
# nothing routes there: nothing may send traffic to them.
POD_CIDR="${MESH_CLUSTER_POD_CIDR:-127.1.0.1/16}"
NODE_IP="127.0.0.1"
NODE_NAME="kwok-node-0"
SERVICE_CIDR="10.96.0.0/16"
SERVICE_APISERVER_IP="10.96.0.1"
SA_ISSUER="https://kubernetes.default.svc.cluster.local"

# Start order.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# shellcheck source=node.sh
source "$HERE/node.sh"
# Where the API server listens: the host side of the real node's link (pods and kubelet
# reach it there) or, without the real node, loopback. Decided at the first `up`.
if [[ -f $STATE/real-node ]] || { [[ ! -f $STATE/kubeconfig ]] && real_node_wanted; }; then
	REAL_NODE=1
	APISERVER_HOST="$HOST_LINK_IP"
	COMPONENTS+=("${NODE_COMPONENTS[@]}")
else
	REAL_NODE=0
	APISERVER_HOST="127.0.0.1"
fi

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
UP_STARTED=0
die() {
	log "ERROR: $*"
	if ((UP_STARTED)); then
		# A failed `up` leaves nothing running; state and logs stay for a look.
		UP_STARTED=0
		log "stopping what was started; logs stay in $STATE/logs ('$0 down' removes them)"
		stop_all
		# ...and undoing what the real node changed on the host.
		if ((REAL_NODE)); then real_node_cleanup || true; fi
	fi
	exit 1
}

# ---------------------------------------------------------------- processes

pidfile() { echo "$STATE/$1.pid"; }

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
	local stat
	stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
	stat="${stat##*) }"
	[[ ${stat%% *} != Z ]]
}

# Prints the recorded pid of a component if that process is alive and is
# still our binary (guards against pid reuse); fails otherwise.
running_pid() {
	local f pid exe bin_dir want
	f="$(pidfile "$1")"
	[[ -f $f ]] || return 1
	pid="$(<"$f")"
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	alive "$pid" || return 1
	# The bin dir `up` used (MESH_CACHE may differ now).
	bin_dir="$(cat "$STATE/bin-dir" 2>/dev/null || echo "$BIN_DIR")"
	want="$bin_dir/$1"
	[[ -f $STATE/$1.exe ]] && want="$(<"$STATE/$1.exe")"
	exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
	[[ $exe == "$want" || $exe == "$want (deleted)" ]] || return 1
	echo "$pid"
}

# Dies, showing its log, if a component that `up` started has exited.
check_started() {
	local c
	for c in "${COMPONENTS[@]}"; do
		[[ -f $(pidfile "$c") ]] || continue
		running_pid "$c" >/dev/null ||
			die "$c (pid $(<"$(pidfile "$c")")) has exited; last lines of $STATE/logs/$c.log:
$(tail -n 20 "$STATE/logs/$c.log" 2>/dev/null)
"
	done
}

# start NAME ARGS...: runs $BIN_DIR/NAME in its own session, in the
# background, logging to logs/NAME.log, and records its pid.
start() {
	local name=$1 pid
	shift
	if pid="$(running_pid "$name")"; then
		log "$name already running (pid $pid)"
		return 0
	fi
	log "starting $name"
	# setsid (not forking: this subshell is no group leader) + exec keeps $! the
	# binary's own pid.
	(exec setsid "$BIN_DIR/$name" "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null) &
	pid=$!
	echo "$pid" >"$(pidfile "$name")"
	sleep 0.2
	alive "$pid" || die "$name exited at once; see $STATE/logs/$name.log:
$(tail -n 20 "$STATE/logs/$name.log")"
}

# stop NAME...: TERM, then KILL after a timeout; only the recorded pids.
stop() {
	local name pid i pids=()
	for name in "$@"; do
		if pid="$(running_pid "$name")"; then
			log "stopping $name (pid $pid)"
			kill -TERM "$pid" 2>/dev/null || true
			pids+=("$pid")
		fi
	done
	for pid in "${pids[@]}"; do
		for ((i = 0; i < 150; i++)); do
			alive "$pid" || break
			sleep 0.1
		done
		if alive "$pid"; then
			log "pid $pid did not exit within 15s of TERM; killing it"
			kill -KILL "$pid" 2>/dev/null || true
			for ((i = 0; i < 50; i++)); do
				alive "$pid" || break
				sleep 0.1
			done
		fi
	done
	for name in "$@"; do rm -f "$(pidfile "$name")"; done
}

# wait_for WHAT TIMEOUT_SECONDS COMMAND...: retries COMMAND until it succeeds.
wait_for() {
	local what=$1 timeout=$2 t0=$SECONDS
	shift 2
	until "$@" >/dev/null 2>&1; do
		check_started
		((SECONDS - t0 < timeout)) ||
			die "timed out after ${timeout}s waiting for $what${WAIT_LOG:+; last lines of $STATE/logs/$WAIT_LOG.log:
$(tail -n 20 "$STATE/logs/$WAIT_LOG.log" 2>/dev/null)}"
		sleep 0.5
	done
	log "$what ok ($((SECONDS - t0))s)"
}

# ---------------------------------------------------------------- PKI

# new_key FILE: a P-256 key in PKCS#8 form.
new_key() {
	openssl ecparam -name prime256v1 -genkey -noout -out "$1.tmp" 2>/dev/null
	openssl pkcs8 -topk8 -nocrypt -in "$1.tmp" -out "$1"
	rm -f "$1.tmp"
}

# new_ca NAME CN: a self-signed CA.
new_ca() {
	local pki="$STATE/pki"
	[[ -f $pki/$1.crt ]] && return 0
	new_key "$pki/$1.key"
	openssl req -x509 -new -key "$pki/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$pki/$1.crt"
}

# cert NAME SUBJECT [SAN [CA]]: key + certificate signed by CA (default: the
# cluster CA); with a SAN it is a server (and client) certificate.
cert() {
	local name=$1 subj=$2 san=${3:-} ca=${4:-ca} pki="$STATE/pki" ext
	[[ -f $pki/$name.crt ]] && return 0
	new_key "$pki/$name.key"
	openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr"
	ext="$pki/$name.ext"
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		if [[ -n $san ]]; then
			echo "extendedKeyUsage=serverAuth,clientAuth"
			echo "subjectAltName=$san"
		else
			echo "extendedKeyUsage=clientAuth"
		fi
	} >"$ext"
	openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" -CAcreateserial \
		-days 3650 -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
	rm -f "$pki/$name.csr" "$ext"
}

make_pki() {
	local pki="$STATE/pki"
	mkdir -p "$pki"
	chmod 700 "$pki"
	[[ -f $pki/ca.crt ]] || log "generating CAs, certificates and service-account keys in $pki"
	new_ca ca mesh-test-cluster-ca
	# Front proxy (request-header authentication) for aggregated API servers;
	# also keeps kube-controller-manager/kube-scheduler from complaining.
	new_ca front-proxy-ca mesh-test-front-proxy-ca
	cert front-proxy-client "/CN=front-proxy-client" "" front-proxy-ca
	cert apiserver "/CN=kube-apiserver" \
		"IP:127.0.0.1,IP:$HOST_LINK_IP,IP:$SERVICE_APISERVER_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	cert admin "/O=system:masters/CN=admin"
	cert kube-controller-manager "/CN=system:kube-controller-manager"
	cert kube-scheduler "/CN=system:kube-scheduler"
	# kwok plays the kubelet of every fake node; the Node authorizer would only
	# let system:node:<name> touch its own node, so it gets cluster-admin.
	cert kwok "/O=system:masters/CN=kwok"
	((REAL_NODE == 0)) || node_pki
	if [[ ! -f $pki/sa.key ]]; then
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
		openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
	fi
}

# kubeconfig FILE USER: a kubeconfig for USER's client certificate.
write_kubeconfig() {
	local file=$1 user=$2 pki="$STATE/pki"
	cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mesh-test
  cluster:
    server: https://$APISERVER_HOST:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$pki/$user.crt")
    client-key-data: $(base64 -w0 "$pki/$user.key")
contexts:
- name: mesh-test
  context:
    cluster: mesh-test
    user: $user
current-context: mesh-test
EOF
	chmod 600 "$file.tmp"
	# Unchanged files stay as they are: running clients may watch them.
	if cmp -s "$file.tmp" "$file"; then rm -f "$file.tmp"; else mv -f "$file.tmp" "$file"; fi
}

# ---------------------------------------------------------------- commands

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_OUT" "$@"; }

apiserver_ready() { [[ -f $KUBECONFIG_OUT ]] && [[ "$(kc get --raw /readyz 2>/dev/null)" == ok ]]; }
node_ready() {
	[[ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
https_healthz() { curl -ksf --max-time 2 "https://127.0.0.1:$1/healthz" | grep -qx ok; }
nodes_ready() { node_ready && { ((REAL_NODE == 0)) || real_node_ready; }; }
http_health() { curl -sf --max-time 2 "$1" >/dev/null; }

cmd_up() {
	local t0=$SECONDS pki="$STATE/pki" c all=1
	command -v "$KUBECTL" >/dev/null || die "kubectl not found"
	command -v openssl >/dev/null || die "openssl not found"
	command -v curl >/dev/null || die "curl not found"

	for c in "${COMPONENTS[@]}"; do running_pid "$c" >/dev/null || all=0; done
	if ((all)) && apiserver_ready && nodes_ready; then
		# Images built since the last `up` are loaded into the running node.
		((REAL_NODE == 0)) || node_images
		log "cluster already up; kubeconfig: $KUBECONFIG_OUT"
		return 0
	fi

	"$HERE/build.sh"
	UP_STARTED=1

	mkdir -p "$STATE/logs" "$STATE/etcd"
	chmod 700 "$STATE/etcd"
	echo "$BIN_DIR" >"$STATE/bin-dir"
	((REAL_NODE == 0)) || real_node_prepare
	make_pki
	((REAL_NODE == 0)) || write_node_config
	write_kubeconfig "$KUBECONFIG_OUT" admin
	for c in kube-controller-manager kube-scheduler kwok; do
		write_kubeconfig "$STATE/$c.kubeconfig" "$c"
	done

	start etcd \
		--name=mesh-test \
		--data-dir="$STATE/etcd" \
		--listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster="mesh-test=http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster-state=new \
		--unsafe-no-fsync \
		--auto-compaction-retention=1h \
		--quota-backend-bytes=2147483648 \
		--log-level=warn
	wait_for "etcd health" 60 http_health "http://127.0.0.1:$ETCD_CLIENT_PORT/health"

	start kube-apiserver \
		--etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--bind-address="$APISERVER_HOST" \
		--advertise-address="$APISERVER_HOST" \
		--secure-port="$APISERVER_PORT" \
		--tls-cert-file="$pki/apiserver.crt" \
		--tls-private-key-file="$pki/apiserver.key" \
		--client-ca-file="$pki/ca.crt" \
		--service-account-issuer="$SA_ISSUER" \
		--service-account-key-file="$pki/sa.pub" \
		--service-account-signing-key-file="$pki/sa.key" \
		--authorization-mode=Node,RBAC \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
		--requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User \
		--requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$pki/front-proxy-client.crt" \
		--proxy-client-key-file="$pki/front-proxy-client.key" \
		--enable-aggregator-routing=true \
		--allow-privileged=true \
		--enable-admission-plugins=PodNodeSelector,PodTolerationRestriction \
		--kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$pki/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority="$pki/ca.crt" \
		--kubelet-preferred-address-types=InternalIP \
		--profiling=false \
		--event-ttl=1h
	wait_for "kube-apiserver /readyz" 120 apiserver_ready

	# No node-lifecycle controller: kwok's fake node does not heartbeat like a kubelet, and
	# the controller would mark every pod NotReady (emptying EndpointSlices) when the node's
	# status goes stale, with nothing to mark them ready again.
	start kube-controller-manager \
		--kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
		--authentication-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
		--authorization-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 \
		--secure-port="$KCM_PORT" \
		--controllers='*,-node-lifecycle-controller' \
		--use-service-account-credentials=true \
		--service-account-private-key-file="$pki/sa.key" \
		--root-ca-file="$pki/ca.crt" \
		--cluster-signing-cert-file="$pki/ca.crt" \
		--cluster-signing-key-file="$pki/ca.key" \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--cluster-name=mesh-test \
		--leader-elect=false \
		--profiling=false
	start kube-scheduler \
		--kubeconfig="$STATE/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig="$STATE/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig="$STATE/kube-scheduler.kubeconfig" \
		--bind-address=127.0.0.1 \
		--secure-port="$SCHEDULER_PORT" \
		--leader-elect=false \
		--profiling=false

	cat >"$STATE/kwok.yaml" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  cidr: "$POD_CIDR"
  nodeIP: "$NODE_IP"
  nodePort: $KWOK_PORT
  serverAddress: "127.0.0.1:$KWOK_PORT"
  manageAllNodes: false
  manageNodesWithAnnotationSelector: "kwok.x-k8s.io/node=fake"
EOF
	start kwok \
		--config="$STATE/kwok.yaml" \
		--kubeconfig="$STATE/kwok.kubeconfig"

	wait_for "kube-controller-manager /healthz" 60 https_healthz "$KCM_PORT"
	wait_for "kube-scheduler /healthz" 60 https_healthz "$SCHEDULER_PORT"
	wait_for "kwok /healthz" 60 http_health "http://127.0.0.1:$KWOK_PORT/healthz"

	# The fake node. kwok manages nodes carrying the annotation below. Without the real
	# node it has no taints, so ordinary workloads schedule on it without tolerations;
	# beside the real node it is tainted, so pods run for real unless they (or their
	# namespace, see README.md) choose kwok.
	local kwok_taints="[]"
	((REAL_NODE == 0)) || kwok_taints='[{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]'
	kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $NODE_NAME
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: $NODE_NAME
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
spec:
  taints: $kwok_taints
EOF
	wait_for "node $NODE_NAME Ready" 90 node_ready
	# A new node registers tainted not-ready; without the node-lifecycle controller (see
	# above) nothing lifts it, so lift it here once the node is Ready.
	kc taint nodes "$NODE_NAME" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
	if ((REAL_NODE)); then
		real_node_start
	fi
	# Pods cannot be created in a namespace before its default ServiceAccount.
	wait_for "default ServiceAccount" 60 kc -n default get serviceaccount default
	UP_STARTED=0
	log "cluster up in $((SECONDS - t0))s; kubeconfig: $KUBECONFIG_OUT"
	log "  e.g. kubectl --kubeconfig $KUBECONFIG_OUT get nodes"
}

stop_all() {
	# The real node first (kubelet would otherwise restart what is being stopped), then the
	# clients of the API server (together), then it, then etcd.
	if ((REAL_NODE)); then stop_node; fi
	stop kwok kube-scheduler kube-controller-manager
	stop kube-apiserver
	stop etcd
}

cmd_down() {
	local clean=0
	stop_all
	if ((REAL_NODE)) || [[ -f $HOST_SNAPSHOT ]]; then
		real_node_cleanup || clean=1
	fi
	if [[ -d $STATE ]]; then
		rm -rf -- "$STATE"
		log "removed $STATE"
	fi
	log "cluster down"
	return "$clean"
}

cmd_status() {
	local c pid up=1
	for c in "${COMPONENTS[@]}"; do
		if pid="$(running_pid "$c")"; then
			printf '%-24s running (pid %s)\n' "$c" "$pid"
		else
			printf '%-24s not running\n' "$c"
			up=0
		fi
	done
	if apiserver_ready; then
		echo "kube-apiserver /readyz  ok (https://$APISERVER_HOST:$APISERVER_PORT)"
	else
		echo "kube-apiserver /readyz  not ready"
		up=0
	fi
	if ((up)) && node_ready; then
		echo "node $NODE_NAME         Ready (kwok: pods are statuses)"
	else
		echo "node $NODE_NAME         not Ready"
		up=0
	fi
	if ((REAL_NODE)); then
		if ((up)) && real_node_ready; then
			echo "node $NODE_NAME_REAL         Ready (real: containerd, IP $REAL_NODE_IP, pods $REAL_POD_CIDR)"
			echo "egress guard            $(guard_counters) packets dropped on $(outward_interfaces | tr '\n' ' ')"
		else
			echo "node $NODE_NAME_REAL         not Ready"
			up=0
		fi
	fi
	if ((up)); then
		echo "cluster: up (kubeconfig: $KUBECONFIG_OUT)"
	else
		echo "cluster: down"
		return 1
	fi
}

cmd_kubeconfig() {
	[[ -f $KUBECONFIG_OUT ]] || die "no kubeconfig: the cluster is not up (run: $0 up)"
	echo "$KUBECONFIG_OUT"
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
kubeconfig) cmd_kubeconfig ;;
guard) guard_counters ;;
images) ((REAL_NODE)) || die "the cluster has no real node"; node_images ;;
build) shift && exec "$HERE/build.sh" "$@" ;;
*)
	sed -n '2,15p' "$0" >&2
	exit 2
	;;
esac
