// nats_js_peer: a JetStream consumer that is not herald (nats.go's JetStream API, from Debian's
// golang-github-nats-io-go-nats-dev), for nats_jetstream_test's "[go]" case. It reads the
// stream a herald bridge exported to, through a durable pull consumer of its own, acknowledging
// each message, until it has seen every value 1..n (each message's payload is a little-endian
// uint64, herald's TrivialCodec) or the timeout passes. It prints one line:
//
//	distinct=<values seen> missing=<values of 1..n not seen> duplicates=<messages seen again>
//	deliveries=<messages fetched> first_missing=<the smallest missing value, 0 if none>
//
// and exits 0 when nothing is missing, 1 otherwise (or when NATS fails, with a line on stderr).
//
//	nats_js_peer -url=nats://127.0.0.1:4222 -stream=PEER -subject='peer.>' -n=1000
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "nats_js_peer: %s\n", fmt.Sprintf(format, args...))
	os.Exit(1)
}

func main() {
	url := flag.String("url", nats.DefaultURL, "the NATS server")
	stream := flag.String("stream", "", "the stream to read")
	subject := flag.String("subject", ">", "the consumer's filter subject")
	durable := flag.String("durable", "go_peer", "the durable consumer's name")
	n := flag.Uint64("n", 0, "the values 1..n to expect")
	timeout := flag.Duration("timeout", 60*time.Second, "how long to wait for all of them")
	flag.Parse()

	nc, err := nats.Connect(*url, nats.Name("nats_js_peer"))
	if err != nil {
		fail("connect to %s: %v", *url, err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		fail("jetstream: %v", err)
	}
	sub, err := js.PullSubscribe(*subject, *durable, nats.BindStream(*stream))
	if err != nil {
		fail("pull subscribe to %s on %s: %v", *subject, *stream, err)
	}
	seen := make([]uint32, *n+1)
	var distinct, duplicates, deliveries uint64
	deadline := time.Now().Add(*timeout)
	for distinct < *n && time.Now().Before(deadline) {
		msgs, err := sub.Fetch(512, nats.MaxWait(time.Second))
		if err != nil && !errors.Is(err, nats.ErrTimeout) {
			fail("fetch: %v", err)
		}
		for _, m := range msgs {
			deliveries++
			if len(m.Data) == 8 {
				v := binary.LittleEndian.Uint64(m.Data)
				if v >= 1 && v <= *n {
					if seen[v] == 0 {
						distinct++
					} else {
						duplicates++
					}
					seen[v]++
				}
			}
			if err := m.Ack(); err != nil {
				fail("ack: %v", err)
			}
		}
	}
	var missing, firstMissing uint64
	for v := uint64(1); v <= *n; v++ {
		if seen[v] == 0 {
			missing++
			if firstMissing == 0 {
				firstMissing = v
			}
		}
	}
	fmt.Printf("distinct=%d missing=%d duplicates=%d deliveries=%d first_missing=%d\n",
		distinct, missing, duplicates, deliveries, firstMissing)
	if missing > 0 {
		os.Exit(1)
	}
}
