package main

import (
	"strings"
	"testing"
	"time"
)

func TestMatchTokensFollowsNATS(t *testing.T) {
	cases := []struct {
		topic, pattern string
		want           bool
	}{
		{"a.b.c", "a.b.c", true},
		{"a.b.c", "a.*.c", true},
		{"a.b.c", "*.*.*", true},
		{"a.b.c", "*.*", false},
		{"a.b", "a.>", true},
		{"a.b.c", "a.>", true},
		{"a", "a.>", false},
		{"a", ">", true},
		{"a.b.c", ">", true},
		{"a.b.c", "a.b", false},
		{"a.b", "a.b.c", false},
		{"a.b.c", "a.*", false},
		{"ab.c", "a*.c", false}, // '*' inside a token is a literal
		{"a*.c", "a*.c", true},
	}
	for _, c := range cases {
		got := matchTokens(strings.Split(c.topic, "."), strings.Split(c.pattern, "."))
		if got != c.want {
			t.Errorf("matchTokens(%q, %q) = %v, want %v", c.topic, c.pattern, got, c.want)
		}
	}
}

func TestBlockDeliversEverythingInOrder(t *testing.T) {
	b := NewBroker[int]()
	const n = 10000
	got := make([][]int, 3)
	var subs []*Subscription[int]
	for i, p := range []string{"x.y", "x.*", "x.>"} {
		i := i
		subs = append(subs, b.Subscribe(p, Options{Capacity: 4, Policy: Block},
			func(m *Message[int]) { got[i] = append(got[i], m.Value) }))
	}
	b.Subscribe("z", Options{Capacity: 1, Policy: Drop}, func(*Message[int]) {
		t.Error("a non-matching subscription received a message")
	})
	for v := 1; v <= n; v++ {
		if matched, delivered := b.Publish("x.y", v); matched != 3 || delivered != 3 {
			t.Fatalf("publish %d: matched %d, delivered %d", v, matched, delivered)
		}
	}
	b.Close()
	for i, s := range subs {
		<-s.Done()
		if len(got[i]) != n {
			t.Fatalf("subscriber %d got %d of %d", i, len(got[i]), n)
		}
		for k, v := range got[i] {
			if v != k+1 {
				t.Fatalf("subscriber %d: message %d is %d", i, k, v)
			}
		}
	}
}

func TestDropCountsWhatItSkips(t *testing.T) {
	b := NewBroker[int]()
	gate := make(chan struct{})
	received := 0
	s := b.Subscribe("t", Options{Capacity: 2, Policy: Drop}, func(*Message[int]) {
		<-gate
		received++
	})
	const n = 100
	for v := 0; v < n; v++ {
		b.Publish("t", v)
	}
	close(gate)
	b.Close()
	<-s.Done()
	if uint64(received)+s.Dropped() != n || s.Dropped() == 0 {
		t.Fatalf("received %d + dropped %d != offered %d (or nothing dropped)", received,
			s.Dropped(), n)
	}
}

func TestUnsubscribeReleasesABlockedPublisher(t *testing.T) {
	b := NewBroker[int]()
	gate := make(chan struct{})
	s := b.Subscribe("t", Options{Capacity: 1, Policy: Block}, func(*Message[int]) { <-gate })
	done := make(chan struct{})
	go func() {
		for v := 0; v < 10; v++ {
			b.Publish("t", v) // blocks once the handler and the buffer are full
		}
		close(done)
	}()
	s.Unsubscribe()
	<-done
	close(gate)
	<-s.Done()
}

func TestRequestsGetTheirOwnReplies(t *testing.T) {
	for _, requesters := range []int{1, 8} {
		lat, elapsed, err := roundTrips(requesters, 2000, 10*time.Second)
		if err != nil {
			t.Fatalf("%d requester(s): %v", requesters, err)
		}
		if len(lat) != requesters*2000 || elapsed <= 0 {
			t.Fatalf("%d requester(s): %d latencies in %v, want %d", requesters, len(lat), elapsed,
				requesters*2000)
		}
	}
}

func TestPercentileIsTheNearestRank(t *testing.T) {
	var sorted []time.Duration
	for i := 1; i <= 100; i++ {
		sorted = append(sorted, time.Duration(i))
	}
	if p := percentile(sorted, 0.50); p != 50 {
		t.Errorf("p50 = %v, want 50", p)
	}
	if p := percentile(sorted, 0.99); p != 99 {
		t.Errorf("p99 = %v, want 99", p)
	}
	if p := percentile(sorted[:1], 0.99); p != 1 {
		t.Errorf("p99 of one = %v, want 1", p)
	}
}
