// Request-reply over the reference broker, the way a Go program built on it would do it (issue
// 14's Go peer): a request carries a reply channel made for it (buffer 1, so the responder never
// waits on a requester that gave up); the responder is a subscription on the request topic whose
// goroutine computes the reply and sends it on that channel; the requester publishes, then waits
// for the reply or its timeout (one reused timer per requester).
package main

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

const serviceTopic = "svc.add"

// Request is what a requester publishes: the operand and where to answer.
type Request struct {
	X     uint64
	Reply chan uint64
}

// roundTrips runs `requesters` goroutines that each make `each` requests to one responder (x ->
// x+1) and returns every round trip's latency and the wall time from the first request to the
// last reply. A timeout or a wrong reply is an error naming the requester.
func roundTrips(requesters int, each uint64, timeout time.Duration) ([]time.Duration,
	time.Duration, error) {
	b := NewBroker[Request]()
	responder := b.Subscribe(serviceTopic, Options{Capacity: 1024, Policy: Block},
		func(m *Message[Request]) { m.Value.Reply <- m.Value.X + 1 })
	defer func() {
		b.Close()
		<-responder.Done()
	}()

	latencies := make([][]time.Duration, requesters)
	errs := make([]error, requesters)
	var start, done sync.WaitGroup
	start.Add(1)
	done.Add(requesters)
	for r := 0; r < requesters; r++ {
		lat := make([]time.Duration, 0, each)
		go func(r int) {
			defer done.Done()
			timer := time.NewTimer(time.Hour)
			if !timer.Stop() {
				<-timer.C
			}
			start.Wait()
			for i := uint64(0); i < each; i++ {
				x := uint64(r)<<40 | i // unique: a reply meant for another request shows
				reply := make(chan uint64, 1)
				t0 := time.Now()
				b.Publish(serviceTopic, Request{X: x, Reply: reply})
				timer.Reset(timeout)
				select {
				case v := <-reply:
					lat = append(lat, time.Since(t0))
					if !timer.Stop() {
						<-timer.C
					}
					if v != x+1 {
						errs[r] = fmt.Errorf("requester %d: request %d got %d, want %d", r, i, v, x+1)
						latencies[r] = lat
						return
					}
				case <-timer.C:
					errs[r] = fmt.Errorf("requester %d: request %d timed out after %v", r, i, timeout)
					latencies[r] = lat
					return
				}
			}
			latencies[r] = lat
		}(r)
	}
	t0 := time.Now()
	start.Done()
	done.Wait()
	elapsed := time.Since(t0)
	var all []time.Duration
	for r := range latencies {
		if errs[r] != nil {
			return nil, 0, errs[r]
		}
		all = append(all, latencies[r]...)
	}
	return all, elapsed, nil
}

// percentile of sorted latencies (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	k := int(p*float64(len(sorted))+0.5) - 1
	if k < 0 {
		k = 0
	}
	if k >= len(sorted) {
		k = len(sorted) - 1
	}
	return sorted[k]
}

// request prints "p50_ns p99_ns requests_per_s" for `requesters` x `each` requests.
func request(requesters int, each uint64, timeout time.Duration) {
	lat, elapsed, err := roundTrips(requesters, each, timeout)
	if err != nil {
		fail("%v", err)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("%d %d %.6g\n", percentile(lat, 0.50).Nanoseconds(),
		percentile(lat, 0.99).Nanoseconds(), float64(len(lat))/elapsed.Seconds())
}
