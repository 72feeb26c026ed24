// Command gcp-server is the go-control-plane peer of tests/scripts/bench-compare.sh: an ADS
// server on go-control-plane's snapshot cache serving resources dumped by our Pilot
// (pilot/examples/xds_dump.rs), so that both serve the same configuration to the same
// clients.
//
// -dir holds one directory per snapshot (served in name order), each with one file per
// resource type: a binary DiscoveryResponse whose resources are that type's resources. Every
// node gets the same snapshot (one group: a sidecar's configuration). A type's version is a
// hash of its file, so a snapshot swap pushes only the types that changed.
//
// The admin listener answers GET /ready (200 once serving), POST /next (the next snapshot
// set, answered once SetSnapshot has returned) and GET /version. SIGHUP also moves to the
// next snapshot.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"sync"
	"syscall"

	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
)

// oneGroup puts every node in the same snapshot group.
type oneGroup struct{}

func (oneGroup) ID(*core.Node) string { return "mesh" }

const group = "mesh"

// loadSnapshot reads the per-type files of one snapshot directory.
func loadSnapshot(dir string) (*cachev3.Snapshot, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.pb"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: no *.pb files", dir)
	}
	snap := &cachev3.Snapshot{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var resp discovery.DiscoveryResponse
		if err := proto.Unmarshal(raw, &resp); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		index := cachev3.GetResponseType(resp.TypeUrl)
		if index == types.UnknownType {
			return nil, fmt.Errorf("%s: unknown type %q", f, resp.TypeUrl)
		}
		items := make([]types.Resource, 0, len(resp.Resources))
		for _, a := range resp.Resources {
			m, err := a.UnmarshalNew()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			items = append(items, m)
		}
		sum := sha256.Sum256(raw)
		snap.Resources[index] = cachev3.NewResources(hex.EncodeToString(sum[:8]), items)
	}
	return snap, nil
}

func main() {
	port := flag.Int("port", 18000, "ADS gRPC port (127.0.0.1)")
	admin := flag.Int("admin", 18001, "admin HTTP port (127.0.0.1)")
	dir := flag.String("dir", "", "directory of snapshot directories")
	flag.Parse()
	if *dir == "" {
		log.Fatal("-dir is required")
	}
	entries, err := os.ReadDir(*dir)
	if err != nil {
		log.Fatal(err)
	}
	var snaps []*cachev3.Snapshot
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for _, n := range names {
		s, err := loadSnapshot(filepath.Join(*dir, n))
		if err != nil {
			log.Fatal(err)
		}
		snaps = append(snaps, s)
	}
	if len(snaps) == 0 {
		log.Fatalf("%s: no snapshot directories", *dir)
	}

	ctx := context.Background()
	cache := cachev3.NewSnapshotCache(true, oneGroup{}, nil)
	var mu sync.Mutex
	current := 0
	set := func(i int) error {
		return cache.SetSnapshot(ctx, group, snaps[i])
	}
	if err := set(0); err != nil {
		log.Fatal(err)
	}
	next := func() int {
		mu.Lock()
		defer mu.Unlock()
		current = (current + 1) % len(snaps)
		if err := set(current); err != nil {
			log.Printf("set snapshot %d: %v", current, err)
		}
		return current
	}

	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		log.Fatal(err)
	}
	grpcServer := grpc.NewServer(
		grpc.MaxConcurrentStreams(1<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{PermitWithoutStream: true}),
	)
	xds := serverv3.NewServer(ctx, cache, nil)
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, xds)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintln(w, names[current])
	})
	mux.HandleFunc("POST /next", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, names[next()])
	})
	adminLis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *admin))
	if err != nil {
		log.Fatal(err)
	}
	go func() { log.Fatal(http.Serve(adminLis, mux)) }()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			next()
		}
	}()
	log.Printf("serving %d snapshots (%v): ADS on %s, admin on %s", len(snaps), names, lis.Addr(), adminLis.Addr())
	log.Fatal(grpcServer.Serve(lis))
}
