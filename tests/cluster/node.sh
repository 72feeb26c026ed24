# The local test cluster's real node, sourced by cluster.sh (see README.md beside it).
#
# One Kubernetes node whose pods are real: containerd and runc run their containers,
# kubelet and kube-proxy (iptables mode) are the ones built with the control plane, the
# CNI bridge plugin gives each pod its own network namespace and IP, and CoreDNS serves
# cluster DNS as a pod. The whole node lives in a network namespace of its own, NODE_NETNS,
# joined to the host by one veth pair (host 10.250.0.1, node 10.250.0.2), so every iptables
# chain kubelet, kube-proxy and CNI write is inside it and goes with it. The host gets the
# veth, two routes (pods and Services via the node) and one guard chain that drops any
# packet of those ranges on the machine's outward interfaces; its processes, mounts and
# cgroups are all under this cluster's own directories and cgroup `mesh-node`, and
# `down` undoes every one of those changes, then checks that nothing is left.
#
# Needs root, and from Debian: containerd, runc, containernetworking-plugins, iptables,
# conntrack (installed with apt-get on first use).

NODE_NAME_REAL="${MESH_CLUSTER_NODE_NAME:-mesh-node-0}"
NODE_NETNS="${MESH_CLUSTER_NODE_NETNS:-mesh-node}"
HOST_VETH="mesh-host0"
NODE_VETH="mesh-node0"
LINK_CIDR="${MESH_CLUSTER_LINK_CIDR:-10.250.0.0/30}"
HOST_LINK_IP="${LINK_CIDR%.*}.$((${LINK_CIDR##*.} + 1))"
HOST_LINK_IP="${HOST_LINK_IP%/*}"
REAL_NODE_IP="${LINK_CIDR%.*}.$((${LINK_CIDR##*.} + 2))"
REAL_NODE_IP="${REAL_NODE_IP%/*}"
REAL_POD_CIDR="${MESH_CLUSTER_REAL_POD_CIDR:-10.244.0.0/24}"
REAL_POD_GW="${REAL_POD_CIDR%.*}.1"
CNI_BRIDGE="mesh-cni0"
DNS_SERVICE_IP="10.96.0.10"
CLUSTER_DOMAIN="cluster.local"
GUARD_CHAIN="MESH-NODE-GUARD"
# Where the node keeps its state: files under the repo's target/, sockets and containerd's
# state (pod netns mounts, shim sockets) under a short path in /run (socket paths are
# limited to 108 bytes).
NODE_STATE="$STATE/node"
NODE_RUN="/run/mesh-node"
CONTAINERD_SOCK="$NODE_RUN/containerd.sock"
CGROUP_NAME="mesh-node"
CNI_BIN_DIR="/usr/lib/cni"
IMAGE_VERSION="$(awk -F'"' '/^version *=/ { print $2; exit }' "$REPO_ROOT/Cargo.toml")"
IMAGES_DIR="${MESH_IMAGES_DIR:-$REPO_ROOT/target/images}"
# Host paths kubelet and the CNI library write to whatever their configuration says.
HOST_POD_LOG_LINKS="/var/log/containers"
HOST_CNI_CACHE="/var/lib/cni"
# kubelet's device-plugin socket directory is fixed, whatever --root-dir says.
HOST_KUBELET_DIR="/var/lib/kubelet"
# `ip netns add` makes this directory (and a mount of it) when it is not there.
HOST_NETNS_DIR="/run/netns"
# containerd 1.6 puts its shims' sockets under /run/containerd/s whatever its state dir is.
HOST_CONTAINERD_RUN="/run/containerd"
HOST_WRITTEN_PATHS=("$HOST_POD_LOG_LINKS" "$HOST_CNI_CACHE" "$HOST_KUBELET_DIR" "$HOST_NETNS_DIR" "$HOST_CONTAINERD_RUN")
HOST_SNAPSHOT="$REPO_ROOT/target/cluster-host-before"

NODE_COMPONENTS=(containerd kubelet kube-proxy)

# real_node_wanted: whether `up` starts the real node (root, Linux, not turned off).
real_node_wanted() {
	[[ ${MESH_CLUSTER_REAL_NODE:-1} != 0 && $(id -u) == 0 ]]
}

# real_node_recorded: whether a running cluster has (or had) the real node.
real_node_recorded() { [[ -f $STATE/real-node ]]; }

# ---------------------------------------------------------------- host facts

# The interfaces traffic leaves the machine by: those of the default routes.
outward_interfaces() {
	{ ip -4 route show default; ip -6 route show default; } 2>/dev/null |
		awk '{ for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1) }' | sort -u
}

# host_snapshot: the host state `down` must give back, one fact a line.
host_snapshot() {
	echo "ip_forward $(cat /proc/sys/net/ipv4/ip_forward)"
	ip -o link show | awk -F': ' '{ print "link " $2 }' | sed 's/@.*//' | sort
	ip netns list 2>/dev/null | awk '{ print "netns " $1 }' | sort
	ip -4 route show table main | sed 's/^/route /' | sort
	iptables -S 2>/dev/null | sed 's/^/iptables /' | sort
	iptables -t nat -S 2>/dev/null | sed 's/^/iptables-nat /' | sort
	awk '{ print "mount " $5 }' /proc/self/mountinfo | sort
	for d in "${HOST_WRITTEN_PATHS[@]}" /etc/cni /opt/cni /var/lib/containerd; do
		[[ -e $d ]] && echo "path $d"
	done
	{ ls -d /sys/fs/cgroup/*/"$CGROUP_NAME" 2>/dev/null || true; } | sed 's/^/cgroup /'
}

# ---------------------------------------------------------------- packages

ensure_node_packages() {
	local missing=() cmd pkg
	for cmd in containerd:containerd runc:runc iptables:iptables conntrack:conntrack \
		nsenter:util-linux ip:iproute2; do
		command -v "${cmd%%:*}" >/dev/null || missing+=("${cmd##*:}")
	done
	[[ -x $CNI_BIN_DIR/bridge && -x $CNI_BIN_DIR/host-local && -x $CNI_BIN_DIR/loopback ]] ||
		missing+=(containernetworking-plugins)
	((${#missing[@]})) || return 0
	command -v apt-get >/dev/null || die "missing packages for the real node: ${missing[*]} (no apt-get to install them)"
	log "installing Debian packages for the real node: ${missing[*]}"
	apt-get update -qq >&2 || true
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
}

# ---------------------------------------------------------------- checks before changes

# stale_node_cleanup: the leftovers of a real node whose processes were all killed without a
# `down` (a machine's session ended, a crash): its netns with nothing running in it, the
# guard chain, routes, cgroups and mounts of any checkout's target/cluster/node. Only when
# nothing of a node is alive; it is then nobody's but a dead cluster's.
stale_node_cleanup() {
	local m
	ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qx "$NODE_NETNS" || return 0
	# The daemons and containerd's shims live in the node's netns; containers in their own.
	[[ -z $(ip netns pids "$NODE_NETNS" 2>/dev/null) ]] || return 0
	log "found a real node left behind by a cluster that was not stopped (netns $NODE_NETNS, nothing running in it): removing it"
	cgroups_down
	while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done < <(awk '{ print $5 }' /proc/self/mountinfo | grep -E "(/target/cluster/node/|^$NODE_RUN(/|$))" | sort -r)
	node_net_down
	rm -rf "$NODE_RUN"
}

# Refuses to start when an address range or the netns is already taken by someone else.
node_preflight() {
	local cidr route
	real_node_recorded || stale_node_cleanup
	ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qx "$NODE_NETNS" &&
		! real_node_recorded && die "network namespace $NODE_NETNS already exists (not this cluster's); remove it or set MESH_CLUSTER_NODE_NETNS"
	ip link show "$HOST_VETH" >/dev/null 2>&1 && ! real_node_recorded &&
		die "interface $HOST_VETH already exists (not this cluster's)"
	for cidr in "$LINK_CIDR" "$REAL_POD_CIDR" "$SERVICE_CIDR"; do
		route="$(ip -4 route show to match "${cidr%/*}" 2>/dev/null | grep -v '^default' | grep -v "dev $HOST_VETH" || true)"
		[[ -z $route ]] || die "address range $cidr is already in use on this machine: $route (set MESH_CLUSTER_LINK_CIDR / MESH_CLUSTER_REAL_POD_CIDR)"
	done
	[[ -d /sys/fs/cgroup/pids ]] || die "the real node needs cgroup v1 controllers under /sys/fs/cgroup (found: $(ls /sys/fs/cgroup | tr '\n' ' '))"
}

# ---------------------------------------------------------------- network

node_net_up() {
	local ifc cidr chain
	if ! ip netns list | awk '{ print $1 }' | grep -qx "$NODE_NETNS"; then
		log "creating network namespace $NODE_NETNS (node $REAL_NODE_IP, host side $HOST_LINK_IP)"
		ip netns add "$NODE_NETNS"
	fi
	if ! ip link show "$HOST_VETH" >/dev/null 2>&1; then
		ip link add "$HOST_VETH" type veth peer name "$NODE_VETH" netns "$NODE_NETNS"
		ip addr add "$HOST_LINK_IP/${LINK_CIDR#*/}" dev "$HOST_VETH"
		ip link set "$HOST_VETH" up
		nsx ip addr add "$REAL_NODE_IP/${LINK_CIDR#*/}" dev "$NODE_VETH"
		nsx ip link set "$NODE_VETH" up
		nsx ip link set lo up
	fi
	ip route replace "$REAL_POD_CIDR" via "$REAL_NODE_IP" dev "$HOST_VETH"
	ip route replace "$SERVICE_CIDR" via "$REAL_NODE_IP" dev "$HOST_VETH"
	# Inside the node only (these are per network namespace): forwarding between the pod
	# bridge and the link, and bridged traffic through iptables (kube-proxy's DNAT).
	nsx sysctl -qw net.ipv4.ip_forward=1
	[[ -e /proc/sys/net/bridge ]] || modprobe br_netfilter 2>/dev/null || true
	nsx sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null ||
		log "warning: net.bridge.bridge-nf-call-iptables is not available in $NODE_NETNS (hairpin Service traffic may fail)"

	# The egress guard: nothing of the node's ranges may cross an outward interface.
	iptables -N "$GUARD_CHAIN" 2>/dev/null || iptables -F "$GUARD_CHAIN"
	for ifc in $(outward_interfaces); do
		for cidr in "$LINK_CIDR" "$REAL_POD_CIDR" "$SERVICE_CIDR"; do
			iptables -A "$GUARD_CHAIN" -o "$ifc" -d "$cidr" -j DROP
			iptables -A "$GUARD_CHAIN" -o "$ifc" -s "$cidr" -j DROP
			iptables -A "$GUARD_CHAIN" -i "$ifc" -d "$cidr" -j DROP
			iptables -A "$GUARD_CHAIN" -i "$ifc" -s "$cidr" -j DROP
		done
	done
	for chain in INPUT FORWARD OUTPUT; do
		iptables -C "$chain" -j "$GUARD_CHAIN" 2>/dev/null || iptables -I "$chain" 1 -j "$GUARD_CHAIN"
	done
}

node_net_down() {
	local chain
	if ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qx "$NODE_NETNS"; then
		log "removing network namespace $NODE_NETNS (its bridge, veths and iptables chains go with it)"
		ip netns del "$NODE_NETNS" || true
	fi
	ip link del "$HOST_VETH" 2>/dev/null || true
	ip route del "$REAL_POD_CIDR" 2>/dev/null || true
	ip route del "$SERVICE_CIDR" 2>/dev/null || true
	for chain in INPUT FORWARD OUTPUT; do
		while iptables -D "$chain" -j "$GUARD_CHAIN" 2>/dev/null; do :; done
	done
	iptables -F "$GUARD_CHAIN" 2>/dev/null || true
	iptables -X "$GUARD_CHAIN" 2>/dev/null || true
}

# nsx CMD...: runs CMD in the node's network namespace (and only that namespace: the
# mount namespace stays the host's, so kubelet's volume mounts are containerd's too).
nsx() { nsenter --net="/run/netns/$NODE_NETNS" -- "$@"; }

# ---------------------------------------------------------------- cgroups

cgroup_dirs() { ls -d /sys/fs/cgroup/*/"$CGROUP_NAME" 2>/dev/null || true; }

# The node's cgroup (and `system` below it, for containerd, kubelet and kube-proxy) in
# every v1 hierarchy; kubelet puts its pods under the same root.
cgroups_up() {
	local h d
	for h in /sys/fs/cgroup/*/; do
		h="${h%/}"
		[[ -f $h/cgroup.procs ]] || continue
		for d in "$h/$CGROUP_NAME" "$h/$CGROUP_NAME/system"; do
			[[ -d $d ]] && continue
			mkdir "$d"
			# A new cpuset starts empty; give it its parent's CPUs and memory nodes.
			if [[ -f $d/cpuset.cpus ]]; then
				cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
				cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
			fi
		done
	done
}

# All processes in the node's cgroup tree (containers, pause, shims, node daemons).
cgroup_pids() {
	local d
	[[ -d /sys/fs/cgroup/pids/$CGROUP_NAME ]] || return 0
	find "/sys/fs/cgroup/pids/$CGROUP_NAME" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u
}

# Kills every process left in the node's cgroups, then removes the cgroups (deepest first).
cgroups_down() {
	local i pids d
	for ((i = 0; i < 50; i++)); do
		pids="$(cgroup_pids)"
		[[ -z $pids ]] && break
		((i == 0)) && log "killing $(wc -w <<<"$pids") processes left in cgroup $CGROUP_NAME (containers, shims)"
		# shellcheck disable=SC2086
		kill -KILL $pids 2>/dev/null || true
		sleep 0.1
	done
	[[ -z $(cgroup_pids) ]] || log "warning: processes still in cgroup $CGROUP_NAME: $(cgroup_pids | tr '\n' ' ')"
	for d in $(cgroup_dirs); do
		find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
	done
}

# ---------------------------------------------------------------- mounts

# Unmounts everything mounted under the node's directories, deepest first.
mounts_down() {
	local m n=0
	while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"
		n=$((n + 1))
	done < <(awk '{ print $5 }' /proc/self/mountinfo | grep -E "^($NODE_STATE|$NODE_RUN)(/|$)" | sort -r)
	((n == 0)) || log "unmounted $n mounts of the node (pod volumes, rootfs, netns)"
}

# ---------------------------------------------------------------- PKI and config

node_pki() {
	cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME_REAL" "IP:$REAL_NODE_IP,DNS:$NODE_NAME_REAL"
	cert kube-proxy "/CN=system:kube-proxy"
	# The API server's client certificate for kubelet's exec, logs and port-forward.
	cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
}

# write_if_changed FILE: stdin into FILE, leaving FILE alone when it already holds exactly
# that (a restart after a crash must not touch what running daemons watch: kube-proxy exits
# when its configuration file changes).
write_if_changed() {
	local tmp="$1.tmp.$$"
	cat >"$tmp"
	if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

write_node_config() {
	local pki="$STATE/pki"
	mkdir -p "$NODE_STATE"/{containerd,kubelet,pod-logs,cni/net.d,cni/ipam,volume-plugins} "$NODE_RUN"
	write_if_changed "$NODE_STATE/containerd.toml" <<EOF
# containerd for the test cluster's real node (written by tests/cluster/node.sh).
version = 2
root = "$NODE_STATE/containerd"
state = "$NODE_RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$NODE_RUN/containerd.sock.ttrpc"

[debug]
  address = "$NODE_RUN/containerd-debug.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/mesh/pause:$IMAGE_VERSION"
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$NODE_STATE/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_STATE/containerd-opt"
EOF
	write_if_changed "$NODE_STATE/cni/net.d/10-mesh-pods.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "mesh-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_STATE/cni/ipam",
        "ranges": [[{ "subnet": "$REAL_POD_CIDR", "gateway": "$REAL_POD_GW" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "loopback" }
  ]
}
EOF
	# Pods with dnsPolicy Default get this: no upstream resolver (nothing may leave).
	echo "# mesh test node: no upstream DNS" | write_if_changed "$NODE_STATE/resolv.conf"
	write_if_changed "$NODE_STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $REAL_NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
rotateCertificates: false
serverTLSBootstrap: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_NAME
failCgroupV1: false
failSwapOn: false
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $NODE_STATE/resolv.conf
podLogsDir: $NODE_STATE/pod-logs
volumePluginDir: $NODE_STATE/volume-plugins
serializeImagePulls: false
maxPods: 110
# Images are loaded, never pulled; never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
evictionPressureTransitionPeriod: 10s
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
shutdownGracePeriod: 0s
localStorageCapacityIsolation: false
EOF
	write_if_changed "$NODE_STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
mode: iptables
hostnameOverride: $NODE_NAME_REAL
bindAddress: $REAL_NODE_IP
clusterCIDR: $REAL_POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the (machine-wide) conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
	write_kubeconfig "$STATE/kubelet.kubeconfig" kubelet
	write_kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy
}

# ---------------------------------------------------------------- processes

# start_node NAME EXE ARGS...: like `start`, for a node daemon: in the node's network
# namespace and in cgroup mesh-node/system (its children, containerd's shims among them,
# stay there, so `down` finds every one).
start_node() {
	local name=$1 exe=$2 pid h
	shift 2
	if pid="$(running_pid "$name")"; then
		log "$name already running (pid $pid)"
		return 0
	fi
	log "starting $name (node $NODE_NAME_REAL)"
	(
		for h in /sys/fs/cgroup/*/"$CGROUP_NAME"/system; do
			[[ -f $h/cgroup.procs ]] && echo "$BASHPID" >"$h/cgroup.procs"
		done
		exec setsid nsenter --net="/run/netns/$NODE_NETNS" -- "$exe" "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null
	) &
	pid=$!
	echo "$pid" >"$(pidfile "$name")"
	echo "$exe" >"$STATE/$name.exe"
	sleep 0.2
	alive "$pid" || die "$name exited at once; see $STATE/logs/$name.log:
$(tail -n 20 "$STATE/logs/$name.log")"
}

ctr_node() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }
containerd_ready() { ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; }
real_node_ready() {
	[[ "$(kc get node "$NODE_NAME_REAL" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
coredns_ready() {
	[[ "$(kc -n kube-system get deployment coredns -o 'jsonpath={.status.readyReplicas}' 2>/dev/null)" == 1 ]]
}

# ---------------------------------------------------------------- images

# Builds the mesh's images (`make images PROFILE=dev`: from the binaries the tests use)
# unless they are already there, then loads into the node's containerd every archive that
# changed since it was last loaded.
node_images() {
	[[ ${MESH_CLUSTER_IMAGES:-} != skip ]] || return 0
	local f name sum stamp profile="${MESH_IMAGE_PROFILE:-dev}" need=0
	for name in pause coredns; do [[ -f $IMAGES_DIR/$name.tar ]] || need=1; done
	if ((need)) || [[ ${MESH_CLUSTER_BUILD_IMAGES:-0} == 1 ]]; then
		log "building the mesh's images ($profile binaries) into $IMAGES_DIR"
		make -s -C "$REPO_ROOT" images PROFILE="$profile" >&2 ||
			die "building the images failed (see the output above)"
	fi
	mkdir -p "$NODE_STATE/images"
	for f in "$IMAGES_DIR"/*.tar; do
		[[ -f $f ]] || continue
		name="$(basename "$f" .tar)"
		sum="$(sha256sum "$f" | cut -d' ' -f1)"
		stamp="$NODE_STATE/images/$name.loaded"
		[[ -f $stamp && "$(<"$stamp")" == "$sum" ]] && continue
		log "loading image $name ($(du -h "$f" | cut -f1)) into the node's containerd"
		ctr_node images import --no-unpack=false "$f" >"$STATE/logs/image-$name.log" 2>&1 ||
			die "loading $f into containerd failed:
$(tail -n 5 "$STATE/logs/image-$name.log")"
		echo "$sum" >"$stamp"
	done
}

# ---------------------------------------------------------------- cluster DNS

apply_coredns() {
	kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  # Cluster names only: no forward plugin, nothing is asked outside the machine.
  Corefile: |
    .:1053 {
        errors
        health :8080
        ready :8181
        kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loop
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector:
    matchLabels: {k8s-app: kube-dns}
  template:
    metadata:
      labels: {k8s-app: kube-dns}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      nodeSelector: {kubernetes.io/hostname: $NODE_NAME_REAL}
      securityContext: {runAsNonRoot: true, runAsUser: 65532}
      containers:
      - name: coredns
        image: docker.io/mesh/coredns:$IMAGE_VERSION
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 1053, protocol: UDP}
        - {name: dns-tcp, containerPort: 1053, protocol: TCP}
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        livenessProbe:
          httpGet: {path: /health, port: 8080}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
        volumeMounts:
        - {name: config, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: $DNS_SERVICE_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, targetPort: 1053, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}
EOF
}

# ---------------------------------------------------------------- up / down

# Before the API server starts: host checks, packages, the snapshot `down` compares with,
# the netns and the link (the API server listens on the host side of it).
real_node_prepare() {
	ensure_node_packages
	node_preflight
	# The host as it was before this cluster's first change, kept until `down` checks it.
	[[ -f $HOST_SNAPSHOT ]] || host_snapshot >"$HOST_SNAPSHOT"
	touch "$STATE/real-node"
	node_net_up
	cgroups_up
}

# After the control plane is up: containerd, the images, kubelet, kube-proxy, CoreDNS.
real_node_start() {
	start_node containerd "$(command -v containerd)" --config "$NODE_STATE/containerd.toml" --log-level warn
	WAIT_LOG=containerd wait_for "containerd" 30 containerd_ready
	node_images
	start_node kubelet "$BIN_DIR/kubelet" \
		--config="$NODE_STATE/kubelet.yaml" \
		--kubeconfig="$STATE/kubelet.kubeconfig" \
		--root-dir="$NODE_STATE/kubelet" \
		--cert-dir="$NODE_STATE/kubelet/pki" \
		--hostname-override="$NODE_NAME_REAL" \
		--node-ip="$REAL_NODE_IP" \
		--node-labels="type=real,mesh.local/node=real" \
		--v=1
	start_node kube-proxy "$BIN_DIR/kube-proxy" --config="$NODE_STATE/kube-proxy.yaml" --v=1
	WAIT_LOG=kubelet wait_for "node $NODE_NAME_REAL Ready" 120 real_node_ready
	# Registered tainted not-ready; nothing else lifts it here (see cluster.sh).
	kc taint nodes "$NODE_NAME_REAL" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
	apply_coredns
	WAIT_LOG=kubelet wait_for "CoreDNS ready" 120 coredns_ready
}

stop_node() {
	stop kube-proxy kubelet
	stop containerd
}

# Everything but the processes `stop` already ended: leftovers in the node's cgroups,
# mounts, the netns, routes, the guard chain, kubelet's and CNI's host files; then the
# comparison with the snapshot taken before the first change.
real_node_cleanup() {
	local f before after diff
	cgroups_down
	mounts_down
	node_net_down
	# Paths kubelet, the CNI library and `ip netns` write whatever their configuration says:
	# removed whole when they were not there before, else only what is ours.
	if [[ -f $HOST_SNAPSHOT ]]; then
		grep -qx "mount $HOST_NETNS_DIR" "$HOST_SNAPSHOT" || umount "$HOST_NETNS_DIR" 2>/dev/null || true
		for f in "${HOST_WRITTEN_PATHS[@]}"; do
			if ! grep -qx "path $f" "$HOST_SNAPSHOT" && [[ -e $f ]]; then
				rm -rf -- "$f"
			fi
		done
	fi
	if [[ -d $HOST_POD_LOG_LINKS ]]; then
		for f in "$HOST_POD_LOG_LINKS"/*; do
			[[ -L $f && $(readlink "$f") == "$NODE_STATE"/* ]] && rm -f "$f"
		done
	fi
	[[ -d $HOST_CNI_CACHE ]] && find "$HOST_CNI_CACHE" -name 'mesh-pods-*' -delete 2>/dev/null
	rm -f "$HOST_KUBELET_DIR/device-plugins/kubelet.sock"
	rm -rf "$NODE_RUN"
	# No process of the node may be left: daemons, shims (their command line names our
	# socket), containers (their cgroup is gone, checked below).
	local left
	left="$(pgrep -af "$CONTAINERD_SOCK|$NODE_STATE|$BIN_DIR/(kubelet|kube-proxy)" 2>/dev/null | grep -v "^$$ " || true)"
	if [[ -n $left ]]; then
		log "ERROR: processes of the real node are still running:"
		printf '%s\n' "$left" >&2
		return 1
	fi
	if [[ -f $HOST_SNAPSHOT ]]; then
		before="$HOST_SNAPSHOT"
		after="$(mktemp)"
		host_snapshot >"$after"
		diff="$(diff "$before" "$after" || true)"
		rm -f "$after"
		if [[ -n $diff ]]; then
			log "ERROR: the host is not as it was before the cluster started:"
			printf '%s\n' "$diff" >&2
			return 1
		fi
		rm -f "$HOST_SNAPSHOT"
		log "host state checked: as before the cluster started"
	fi
}

# The guard's counters: packets dropped on the outward interfaces (0 unless something
# tried to leave).
guard_counters() {
	iptables -L "$GUARD_CHAIN" -v -x -n 2>/dev/null | awk 'NR > 2 { p += $1 } END { print p + 0 }'
}
