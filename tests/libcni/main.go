// libcni-call drives CNI plugins through Debian's libcni (golang-github-appc-cni-dev), as a
// runtime built on it does: the network list loaded from a conf dir by name, then one of
//
//	validate <confdir> <network>                      ValidateNetworkList (VERSION of each plugin)
//	add|check|del <confdir> <network> <id> <netns>    AddNetworkList / CheckNetworkList / DelNetworkList
//
// with CNI_PATH for the plugin dirs, CNI_ARGS (K=V;K=V) as the runtime's Args and the results
// cached under CNI_CACHE_DIR (CHECK and DEL get their prevResult from there). Prints the list's
// version, then ADD's result as the runtime reads it. Built by the tests (GOPATH mode, no
// network): `go build` with GO111MODULE=off and GOPATH=/usr/share/gocode.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 4 {
		fail("usage: libcni-call validate|add|check|del CONFDIR NETWORK [ID NETNS]")
	}
	verb, confDir, network := os.Args[1], os.Args[2], os.Args[3]
	list, err := libcni.LoadConfList(confDir, network)
	if err != nil {
		fail("loading %s from %s: %v", network, confDir, err)
	}
	paths := filepath.SplitList(os.Getenv("CNI_PATH"))
	cni := libcni.NewCNIConfigWithCacheDir(paths, os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()
	fmt.Printf("version %s\n", list.CNIVersion)
	if verb == "validate" {
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail("validate: %v", err)
		}
		fmt.Printf("capabilities %v\n", caps)
		return
	}
	if len(os.Args) < 6 {
		fail("%s needs ID and NETNS", verb)
	}
	rt := &libcni.RuntimeConf{ContainerID: os.Args[4], NetNS: os.Args[5], IfName: "eth0"}
	for _, kv := range strings.Split(os.Getenv("CNI_ARGS"), ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			rt.Args = append(rt.Args, [2]string{k, v})
		}
	}
	switch verb {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("add: %v", err)
		}
		out, _ := json.Marshal(result)
		fmt.Printf("result %s\n", out)
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail("check: %v", err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("del: %v", err)
		}
	default:
		fail("unknown verb %s", verb)
	}
}
