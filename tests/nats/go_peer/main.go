// nats_go_peer: a NATS client that is not herald (nats.go, from Debian's
// golang-github-nats-io-go-nats-dev), for nats_bridge_test's "[go]" cases. It talks to a herald
// bridge that exports "out.>" and imports "in.>":
//
//  1. subscribes to "out.>", then publishes "in.ready" (so the test knows it listens);
//  2. waits for one message on "out.>" and publishes "in.report": what it received, as text,
//     one "name=value" line per header value (names sorted, values in the order received);
//  3. publishes "in.from-go", payload "from nats.go", with headers Trace-Id: go-42 and
//     Multi: x, Multi: y.
//
// With -wire it only publishes, payload "w", to subjects herald cannot send but nats.go does
// (it checks only that a subject is not empty): "in.wire.nul\x00secret", "in.wire.space x",
// "in.wire.tab\tx", "in.wire.ctl\x01\x7f\xff", then "in.wire.done", and exits.
//
// The test checks the report and the imported message; this program only fails (exit 1, a line
// on stderr) when NATS does.
//
//	nats_go_peer -url=nats://127.0.0.1:4222 [-wire]
package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "nats_go_peer: %s\n", fmt.Sprintf(format, args...))
	os.Exit(1)
}

func report(m *nats.Msg) string {
	var b strings.Builder
	fmt.Fprintf(&b, "subject=%s\npayload=%s\n", m.Subject, m.Data)
	names := make([]string, 0, len(m.Header))
	for name := range m.Header {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		for _, v := range m.Header.Values(name) {
			fmt.Fprintf(&b, "%s=%s\n", name, v)
		}
	}
	return b.String()
}

func main() {
	url := flag.String("url", nats.DefaultURL, "the NATS server")
	timeout := flag.Duration("timeout", 20*time.Second, "how long to wait for herald's message")
	wire := flag.Bool("wire", false, "publish the subjects herald cannot send, and exit")
	flag.Parse()

	nc, err := nats.Connect(*url, nats.Name("nats_go_peer"))
	if err != nil {
		fail("connect to %s: %v", *url, err)
	}
	defer nc.Close()
	if *wire {
		for _, subject := range []string{"in.wire.nul\x00secret", "in.wire.space x",
			"in.wire.tab\tx", "in.wire.ctl\x01\x7f\xff", "in.wire.done"} {
			if err := nc.Publish(subject, []byte("w")); err != nil {
				fail("publish %q: %v", subject, err)
			}
		}
		if err := nc.Flush(); err != nil {
			fail("flush: %v", err)
		}
		return
	}
	sub, err := nc.SubscribeSync("out.>")
	if err != nil {
		fail("subscribe: %v", err)
	}
	if err := nc.Flush(); err != nil {
		fail("flush: %v", err)
	}
	if err := nc.Publish("in.ready", []byte("ready")); err != nil {
		fail("publish in.ready: %v", err)
	}

	m, err := sub.NextMsg(*timeout)
	if err != nil {
		fail("no message on out.> within %v: %v", *timeout, err)
	}
	if err := nc.Publish("in.report", []byte(report(m))); err != nil {
		fail("publish in.report: %v", err)
	}

	out := nats.NewMsg("in.from-go")
	out.Data = []byte("from nats.go")
	out.Header.Set("Trace-Id", "go-42")
	out.Header.Add("Multi", "x")
	out.Header.Add("Multi", "y")
	if err := nc.PublishMsg(out); err != nil {
		fail("publish in.from-go: %v", err)
	}
	if err := nc.Flush(); err != nil {
		fail("flush: %v", err)
	}
}
