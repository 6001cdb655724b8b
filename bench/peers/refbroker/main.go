// refbroker runs one workload of bench/bench_broker.cpp on the Go reference broker (broker.go)
// and prints its result as one line on stdout; bench_broker runs it once per repetition,
// interleaved with herald and the other peers. Everything it receives is checked: a lost,
// duplicated or reordered message (where none may be) fails the run with a non-zero exit and a
// line on stderr naming the contender.
//
//	refbroker -workload=fanout -subs=N -messages=M [-mode=block|drop] [-budget-ms=B]
//	    1 publisher, N subscribers on "market.eu.quote", each with a channel of 1024; publishes
//	    1..M (stopping early once B ms are spent, checked every 256). Prints
//	    "value loss cpu_ns csw": block: deliveries/s until the last subscriber had everything;
//	    drop: publisher ns/publish; the share of deliveries lost; process CPU ns and context
//	    switches (per 1000) per message received (block) or offered (drop).
//	refbroker -workload=pingpong -rounds=R
//	    A publishes on "ping", B (the ping subscriber) publishes on "pong", A (the pong subscriber)
//	    receives and publishes the next ping. Prints ns per round trip.
//	refbroker -workload=wildcard -nonmatching=K [-budget-ms=B]
//	    3 wildcard subscriptions match "market.eu.quote" among K that do not; prints the
//	    publishing thread's CPU ns per publish, timed in batches of 256, the 3 subscribers
//	    caught up between batches outside the clock.
//	refbroker -workload=request -requesters=N -requests=M [-timeout-ms=T]
//	    Request-reply (request.go): N requesters each make M requests to one responder on
//	    "svc.add", each with a reply channel of its own and a timeout of T ms (a timeout fails
//	    the run). Prints "p50_ns p99_ns requests_per_s" of the round trips.
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

const contender = "Go reference broker"

// Tick is the 32-byte payload of bench_broker.
type Tick struct {
	Seq        uint64
	Instrument uint64
	Bid        float64
	Ask        float64
}

func makeTick(seq uint64) Tick {
	return Tick{Seq: seq, Instrument: seq * 7, Bid: 100.0 + float64(seq&1023), Ask: 100.5}
}

const topic = "market.eu.quote"

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAILED %s: %s\n", contender, fmt.Sprintf(format, args...))
	os.Exit(1)
}

type usage struct{ cpuNs, switches float64 }

func usageNow() usage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		fail("getrusage: %v", err)
	}
	return usage{
		cpuNs:    float64(ru.Utime.Nano() + ru.Stime.Nano()),
		switches: float64(ru.Nvcsw + ru.Nivcsw),
	}
}

const clockThreadCPUTimeID = 3 // CLOCK_THREAD_CPUTIME_ID

// threadCPU is the calling OS thread's CPU time (the caller has locked its goroutine to it).
func threadCPU() time.Duration {
	var ts syscall.Timespec
	_, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTimeID,
		uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		fail("clock_gettime: %v", errno)
	}
	return time.Duration(ts.Nano())
}

// consumer is one fan-out subscriber's view: what it got and when it had everything.
type consumer struct {
	got, last uint64
	ok        bool
	finished  bool
	finish    time.Time
	_         [64]byte // keep subscribers' counters off each other's cache lines
}

func fanout(subs int, messages uint64, policy Policy, budget time.Duration) {
	b := NewBroker[Tick]()
	states := make([]*consumer, subs)
	handles := make([]*Subscription[Tick], subs)
	var target atomic.Uint64
	target.Store(math.MaxUint64)
	for i := range states {
		st := &consumer{ok: true}
		states[i] = st
		handles[i] = b.Subscribe(topic, Options{Capacity: 1024, Policy: policy},
			func(m *Message[Tick]) {
				seq := m.Value.Seq
				if policy == Block {
					st.ok = st.ok && seq == st.last+1
				} else {
					st.ok = st.ok && seq > st.last
				}
				st.last = seq
				st.got++
				if policy == Block && !st.finished && st.got >= target.Load() {
					st.finish = time.Now()
					st.finished = true
				}
			})
	}
	runtime.Gosched()

	before := usageNow()
	t0 := time.Now()
	deadline := t0.Add(budget)
	target.Store(messages)
	var sent uint64
	for sent < messages {
		if sent&255 == 255 && time.Now().After(deadline) {
			break
		}
		sent++
		b.Publish(topic, makeTick(sent))
	}
	target.Store(sent)
	published := time.Now()
	b.Close() // each subscriber drains what is queued, then its goroutine ends
	for _, h := range handles {
		<-h.Done()
	}
	closed := time.Now()
	after := usageNow()

	var total uint64
	last := t0
	for i, st := range states {
		total += st.got
		if !st.ok {
			fail("subscriber %d saw sequence numbers out of order, duplicated or missing", i)
		}
		if policy == Block {
			if st.got != sent {
				fail("subscriber %d got %d of %d messages under the block policy", i, st.got, sent)
			}
			if !st.finished {
				st.finish = closed
			}
			if st.finish.After(last) {
				last = st.finish
			}
		} else if st.got+handles[i].Dropped() != sent {
			fail("subscriber %d: delivered %d + dropped %d != offered %d", i, st.got,
				handles[i].Dropped(), sent)
		}
	}
	offered := float64(sent) * float64(subs)
	loss := 1 - float64(total)/offered
	per := offered
	var value float64
	if policy == Block {
		per = math.Max(1, float64(total))
		value = float64(total) / last.Sub(t0).Seconds()
	} else {
		value = float64(published.Sub(t0).Nanoseconds()) / float64(sent)
	}
	fmt.Printf("%.6g %.6g %.6g %.6g\n", value, loss, (after.cpuNs-before.cpuNs)/per,
		(after.switches-before.switches)*1000/per)
}

func pingpong(rounds uint64) {
	b := NewBroker[Tick]()
	done := make(chan struct{})
	bad := ""
	var round uint64 = 1
	var t0 time.Time
	// B: answers every ping with a pong carrying the same sequence number.
	b.Subscribe("ping", Options{Capacity: 1024, Policy: Block}, func(m *Message[Tick]) {
		b.Publish("pong", m.Value)
	})
	// A: checks the pong, then sends the next ping (or stops).
	b.Subscribe("pong", Options{Capacity: 1024, Policy: Block}, func(m *Message[Tick]) {
		if m.Value.Seq != round && bad == "" {
			bad = fmt.Sprintf("pong %d arrived when %d was expected", m.Value.Seq, round)
		}
		if round == rounds {
			close(done)
			return
		}
		round++
		b.Publish("ping", makeTick(round))
	})
	runtime.Gosched()
	t0 = time.Now()
	b.Publish("ping", makeTick(1))
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		fail("ping-pong stalled at round %d", round)
	}
	elapsed := time.Since(t0)
	b.Close()
	if bad != "" {
		fail("%s", bad)
	}
	fmt.Printf("%.6g\n", float64(elapsed.Nanoseconds())/float64(rounds))
}

// nonmatching is bench_broker's generator of non-matching patterns, several shapes, some sharing
// a prefix with the published topic.
func nonmatching(i int) string {
	switch i % 4 {
	case 0:
		return fmt.Sprintf("dev%d.>", i)
	case 1:
		return fmt.Sprintf("dev.%d.*", i)
	case 2:
		return fmt.Sprintf("market.x%d.*", i)
	default:
		return fmt.Sprintf("market.*.q%d", i)
	}
}

func wildcard(others int, budget time.Duration) {
	const batch = 256
	runtime.LockOSThread() // threadCPU measures this goroutine's own thread
	b := NewBroker[Tick]()
	for i := 0; i < others; i++ {
		b.Subscribe(nonmatching(i), Options{Capacity: 1, Policy: Drop}, func(*Message[Tick]) {
			fail("a non-matching subscription received a message")
		})
	}
	matching := []string{"market.*.quote", "market.>", "*.*.quote"}
	counts := make([]atomic.Uint64, len(matching))
	for k, p := range matching {
		c := &counts[k]
		b.Subscribe(p, Options{Capacity: 2 * batch, Policy: Block}, func(*Message[Tick]) {
			c.Add(1)
		})
	}
	var total time.Duration
	var count, seq uint64
	for total < budget || count == 0 {
		t := threadCPU()
		for k := 0; k < batch; k++ {
			seq++
			matched, delivered := b.Publish(topic, makeTick(seq))
			if matched != len(matching) || delivered != len(matching) {
				fail("publish %d reached %d of the 3 matching subscribers (%d matched)", seq,
					delivered, matched)
			}
		}
		total += threadCPU() - t
		count += batch
		for k := range counts { // let the subscribers catch up, outside the clock
			for counts[k].Load() != count {
				runtime.Gosched()
			}
		}
	}
	b.Close()
	fmt.Printf("%.6g\n", float64(total.Nanoseconds())/float64(count))
}

func main() {
	workload := flag.String("workload", "", "fanout | pingpong | wildcard | request")
	subs := flag.Int("subs", 1, "fanout: subscribers")
	messages := flag.Uint64("messages", 100000, "fanout: messages to publish")
	mode := flag.String("mode", "block", "fanout: block | drop")
	budgetMs := flag.Int("budget-ms", 800, "fanout: stop publishing after this long; "+
		"wildcard: CPU time to spend")
	rounds := flag.Uint64("rounds", 20000, "pingpong: round trips")
	others := flag.Int("nonmatching", 100, "wildcard: non-matching subscriptions")
	requesters := flag.Int("requesters", 1, "request: concurrent requesters")
	requests := flag.Uint64("requests", 20000, "request: requests per requester")
	timeoutMs := flag.Int("timeout-ms", 1000, "request: how long a requester waits for a reply")
	flag.Parse()
	budget := time.Duration(*budgetMs) * time.Millisecond
	switch *workload {
	case "fanout":
		policy := Block
		if *mode == "drop" {
			policy = Drop
		} else if *mode != "block" {
			fail("unknown -mode=%s", *mode)
		}
		if *subs < 1 || *messages < 1 {
			fail("-subs and -messages must be at least 1")
		}
		fanout(*subs, *messages, policy, budget)
	case "pingpong":
		if *rounds < 1 {
			fail("-rounds must be at least 1")
		}
		pingpong(*rounds)
	case "wildcard":
		wildcard(*others, budget)
	case "request":
		if *requesters < 1 || *requests < 1 || *timeoutMs < 1 {
			fail("-requesters, -requests and -timeout-ms must be at least 1")
		}
		request(*requesters, *requests, time.Duration(*timeoutMs)*time.Millisecond)
	default:
		fail("unknown -workload=%q (fanout | pingpong | wildcard | request)", *workload)
	}
}
