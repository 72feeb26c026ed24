// Command coredns is CoreDNS with its standard plugin set, built from the Go module proxy
// for the local test cluster's real node (cluster DNS for pods: kube-dns 10.96.0.10).
// CoreDNS's own root module is a main package and cannot be imported, so this wrapper
// starts it through its library entry point, as CoreDNS's own main does.
package main

import (
	_ "github.com/coredns/coredns/core/plugin" // registers every standard plugin
	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
