#!/usr/bin/env bash
# Builds the local test cluster's binaries (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kwok, CoreDNS) from
# the Go module proxy into
#   ${MESH_CACHE:-$HOME/.cache/mesh}/cluster/bin
# Each binary is skipped when it is already there with a stamp that matches its
# wrapper module (go.mod + go.sum + sources), the Go version and the flags.
#
# usage: build.sh [--force] [component...]   components: etcd k8s kwok coredns (default: all)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${MESH_CACHE:-$HOME/.cache/mesh}/cluster"
BIN_DIR="$CACHE_ROOT/bin"
FORCE=0

log() { printf '[cluster build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Version of a required module, read from a wrapper module's go.mod.
modver() { awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) { print ($1 == "require" ? $3 : $2); exit }' "$HERE/$1/go.mod"; }

K8S_VERSION="$(modver k8s k8s.io/kubernetes)"
ETCD_VERSION="$(modver etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(modver kwok sigs.k8s.io/kwok)"
COREDNS_VERSION="$(modver coredns github.com/coredns/coredns)"
[[ -n $K8S_VERSION && -n $ETCD_VERSION && -n $KWOK_VERSION && -n $COREDNS_VERSION ]] || die "cannot read versions from the wrapper go.mod files"

stamp_of() { # component, extra text -> hash of everything that decides the binary
	local dir="$HERE/$1"
	{
		printf '%s\n' "$2"
		go env GOVERSION GOOS GOARCH
		cat "$dir/go.mod" "$dir/go.sum" "$dir"/*.go
	} | sha256sum | cut -c1-32
}

is_fresh() { # binary, stamp
	[[ $FORCE == 0 && -x "$BIN_DIR/$1" && -f "$BIN_DIR/.$1.stamp" && "$(cat "$BIN_DIR/.$1.stamp")" == "$2" ]]
}

# go_build component binary package ldflags [stamp-extra [build-dir]]
go_build() {
	local comp=$1 bin=$2 pkg=$3 ldflags=$4 extra=${5:-} dir=${6:-$HERE/$1} stamp t0
	stamp="$(stamp_of "$comp" "$pkg $ldflags${extra:+ $extra}")"
	if is_fresh "$bin" "$stamp"; then
		log "$bin is up to date"
		return 0
	fi
	log "building $bin ($pkg) ..."
	t0=$SECONDS
	rm -f "$BIN_DIR/.$bin.stamp"
	(
		cd "$dir"
		CGO_ENABLED=0 GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" \
			go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/$bin.tmp" "$pkg"
	) || die "build of $bin failed"
	mv -f "$BIN_DIR/$bin.tmp" "$BIN_DIR/$bin"
	printf '%s\n' "$stamp" >"$BIN_DIR/.$bin.stamp"
	log "built $bin in $((SECONDS - t0))s"
}

# The API server refuses loopback addresses (127.0.0.0/8, ::1) in Endpoints and
# EndpointSlices (ValidateEndpointIP in k8s.io/kubernetes/pkg/apis/core/validation),
# but this cluster's pod IPs are loopback addresses on purpose: tests bind real
# servers on them, and no traffic may leave 127.0.0.0/8. So the k8s binaries are
# built against a copy of the k8s.io/kubernetes module (taken from the module
# cache, so verified against go.sum) with exactly that one check disabled, via
# a throw-away build module under the cache dir that `replace`s
# k8s.io/kubernetes with the copy. (`go build -overlay` cannot do it: Go refuses
# overlays of files in the module cache.) Nothing of Kubernetes' code is kept in
# this repository.
K8S_PATCH_FILE=pkg/apis/core/validation/validation.go
K8S_PATCH_FROM='^	if ip\.IsLoopback() {$'
K8S_PATCH_SED='s|^	if ip\.IsLoopback() {$|	if false \&\& ip.IsLoopback() { // mesh test cluster: loopback endpoint IPs allowed|'

# Prepares $CACHE_ROOT/build/k8s (the build module) and the patched copy of
# k8s.io/kubernetes it points at.
prepare_k8s_build_module() {
	local orig src="$CACHE_ROOT/src/kubernetes@$K8S_VERSION-loopback" mod="$CACHE_ROOT/build/k8s" n
	# (go list -m only knows the directory once the module is downloaded.)
	orig="$(cd "$HERE/k8s" && GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" go mod download k8s.io/kubernetes &&
		GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
	[[ -n $orig && -f $orig/$K8S_PATCH_FILE ]] || die "cannot find k8s.io/kubernetes@$K8S_VERSION in the module cache"
	n="$(grep -c "$K8S_PATCH_FROM" "$orig/$K8S_PATCH_FILE" || true)"
	[[ $n == 1 ]] || die "the loopback-endpoint patch no longer applies to $K8S_PATCH_FILE ($n matches); review build.sh"
	if [[ ! -f $src/.patched ]]; then
		log "preparing patched copy of k8s.io/kubernetes@$K8S_VERSION (loopback endpoint IPs allowed)"
		chmod_rm "$src"
		mkdir -p "$(dirname "$src")"
		# Hard links where possible (same file system): no extra disk. Module
		# cache files are read-only; only the patched file is written anew.
		cp -al "$orig" "$src.tmp" 2>/dev/null || { chmod_rm "$src.tmp" && cp -a "$orig" "$src.tmp"; }
		find "$src.tmp" -type d -exec chmod u+w {} +
		rm -f "$src.tmp/$K8S_PATCH_FILE"
		sed "$K8S_PATCH_SED" "$orig/$K8S_PATCH_FILE" >"$src.tmp/$K8S_PATCH_FILE"
		grep -q 'mesh test cluster: loopback endpoint IPs allowed' "$src.tmp/$K8S_PATCH_FILE" || die "patching failed"
		touch "$src.tmp/.patched"
		mv "$src.tmp" "$src"
	fi
	rm -rf "$mod"
	mkdir -p "$mod"
	cp "$HERE/k8s/go.mod" "$HERE/k8s/go.sum" "$HERE/k8s"/*.go "$mod/"
	(cd "$mod" && go mod edit -module meshtest/cluster/k8s-build -replace "k8s.io/kubernetes=$src")
}

# rm -rf that also works on trees copied from the (read-only) module cache.
chmod_rm() {
	[[ -e $1 ]] || return 0
	find "$1" -type d -exec chmod u+w {} + 2>/dev/null || true
	rm -rf "$1"
}

K8S_BINS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"
build_k8s() {
	local minor ldflags b todo=0
	minor="$(cut -d. -f2 <<<"$K8S_VERSION")"
	ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
	ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
	ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
	for b in $K8S_BINS; do
		is_fresh "$b" "$(stamp_of k8s "k8s.io/kubernetes/cmd/$b $ldflags $K8S_PATCH_SED")" || todo=1
	done
	if ((todo)); then prepare_k8s_build_module; fi
	for b in $K8S_BINS; do
		go_build k8s "$b" "k8s.io/kubernetes/cmd/$b" "$ldflags" "$K8S_PATCH_SED" "$CACHE_ROOT/build/k8s"
	done
}
build_etcd() { go_build etcd etcd meshtest/cluster/etcd "-s -w"; }
build_kwok() { go_build kwok kwok sigs.k8s.io/kwok/cmd/kwok "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"; }
# CoreDNS for the real node's cluster DNS (run as a pod from the image `mesh/coredns`).
build_coredns() { go_build coredns coredns meshtest/cluster/coredns "-s -w"; }

main() {
	local comps=()
	while (($#)); do
		case $1 in
		--force) FORCE=1 ;;
		etcd | k8s | kwok | coredns) comps+=("$1") ;;
		-h | --help) sed -n '2,9p' "$0"; exit 0 ;;
		*) die "unknown argument: $1" ;;
		esac
		shift
	done
	((${#comps[@]})) || comps=(etcd k8s kwok coredns)
	command -v go >/dev/null || die "go is not installed"
	mkdir -p "$BIN_DIR"
	local t0=$SECONDS c
	log "versions: kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, coredns $COREDNS_VERSION; $(go env GOVERSION); bin dir $BIN_DIR"
	for c in "${comps[@]}"; do "build_$c"; done
	log "all binaries ready in $((SECONDS - t0))s"
}

main "$@"
