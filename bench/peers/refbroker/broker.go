// The reference broker of DESIGN.md, the Go design herald starts from: a typed Broker[T] holding
// a map of subscribers (each a buffered channel drained by its own goroutine) behind a
// sync.RWMutex. Publish takes a snapshot of the matching subscribers under the read lock and
// delivers outside it, so a slow subscriber never holds the registry; each subscriber has its own
// policy when its channel is full: block (the publisher waits) or drop (the message is counted
// and skipped for that subscriber). Wildcards follow NATS: a token "*" matches exactly one token,
// a last token ">" matches one or more trailing tokens; matching splits the topic and scans every
// subscription's pattern.
//
// It is written to be a fair peer: one allocation per published message (shared by every
// subscriber), the topic split into a stack buffer, channel operations on their fast paths first.
package main

import (
	"strings"
	"sync"
	"sync/atomic"
)

// Policy is what a publisher does when a subscriber's channel is full.
type Policy int

const (
	// Block makes the publisher wait for room.
	Block Policy = iota
	// Drop skips the message for that subscriber and counts it.
	Drop
)

// Message is what a subscriber receives; one instance is shared by every subscriber.
type Message[T any] struct {
	Topic string
	Seq   uint64
	Value T
}

// Options of one subscription.
type Options struct {
	Capacity int // channel buffer
	Policy   Policy
}

type subscriber[T any] struct {
	tokens  []string
	ch      chan *Message[T]
	policy  Policy
	quit    chan struct{} // closed on unsubscribe: blocked publishers give up, the goroutine drains
	done    chan struct{} // closed when the goroutine has returned
	dropped atomic.Uint64
	once    sync.Once
}

// Subscription is the handle Subscribe returns.
type Subscription[T any] struct {
	broker *Broker[T]
	id     uint64
	sub    *subscriber[T]
}

// Broker routes values of type T from publishers to subscribers.
type Broker[T any] struct {
	mu     sync.RWMutex
	subs   map[uint64]*subscriber[T]
	nextID uint64
	seq    atomic.Uint64
	closed bool
}

// NewBroker returns an empty broker.
func NewBroker[T any]() *Broker[T] {
	return &Broker[T]{subs: make(map[uint64]*subscriber[T])}
}

// Subscribe registers a NATS-style pattern (assumed valid); handler runs on the subscription's
// own goroutine, one message at a time, in publish order.
func (b *Broker[T]) Subscribe(pattern string, opt Options, handler func(*Message[T])) *Subscription[T] {
	if opt.Capacity < 1 {
		opt.Capacity = 1
	}
	s := &subscriber[T]{
		tokens: strings.Split(pattern, "."),
		ch:     make(chan *Message[T], opt.Capacity),
		policy: opt.Policy,
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	if b.closed {
		s.stop()
	} else {
		b.subs[id] = s
	}
	b.mu.Unlock()
	go s.run(handler)
	return &Subscription[T]{broker: b, id: id, sub: s}
}

func (s *subscriber[T]) run(handler func(*Message[T])) {
	defer close(s.done)
	for {
		select { // fast path: a message is already queued
		case m := <-s.ch:
			handler(m)
			continue
		default:
		}
		select {
		case m := <-s.ch:
			handler(m)
		case <-s.quit:
			for { // drain what was queued before the stop, then end
				select {
				case m := <-s.ch:
					handler(m)
				default:
					return
				}
			}
		}
	}
}

func (s *subscriber[T]) stop() { s.once.Do(func() { close(s.quit) }) }

// deliver offers m to this subscriber under its policy; false when it was not queued.
func (s *subscriber[T]) deliver(m *Message[T]) bool {
	select { // fast path: there is room
	case s.ch <- m:
		return true
	default:
	}
	if s.policy == Drop {
		s.dropped.Add(1)
		return false
	}
	select {
	case s.ch <- m:
		return true
	case <-s.quit: // unsubscribed while we waited
		return false
	}
}

// Unsubscribe removes the subscription; its goroutine handles what was already queued, then
// ends. Wait for that with Done.
func (sub *Subscription[T]) Unsubscribe() {
	sub.broker.mu.Lock()
	delete(sub.broker.subs, sub.id)
	sub.broker.mu.Unlock()
	sub.sub.stop()
}

// Done is closed when the subscription's goroutine has returned.
func (sub *Subscription[T]) Done() <-chan struct{} { return sub.sub.done }

// Dropped counts the messages this subscriber lost to the Drop policy.
func (sub *Subscription[T]) Dropped() uint64 { return sub.sub.dropped.Load() }

// Publish delivers value to every subscriber whose pattern matches topic (a literal topic,
// assumed valid); returns how many matched and how many queued it.
func (b *Broker[T]) Publish(topic string, value T) (matched, delivered int) {
	var buf [16]string
	tokens := splitTopic(buf[:0], topic)
	var small [8]*subscriber[T]
	targets := small[:0]
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return 0, 0
	}
	for _, s := range b.subs {
		if matchTokens(tokens, s.tokens) {
			targets = append(targets, s)
		}
	}
	seq := b.seq.Add(1)
	b.mu.RUnlock()
	if len(targets) == 0 {
		return 0, 0
	}
	m := &Message[T]{Topic: topic, Seq: seq, Value: value}
	for _, s := range targets {
		if s.deliver(m) {
			delivered++
		}
	}
	return len(targets), delivered
}

// Close stops every subscription (each drains what is queued, then its goroutine ends) and makes
// later publishes no-ops.
func (b *Broker[T]) Close() {
	b.mu.Lock()
	b.closed = true
	subs := b.subs
	b.subs = make(map[uint64]*subscriber[T])
	b.mu.Unlock()
	for _, s := range subs {
		s.stop()
	}
}

func splitTopic(out []string, topic string) []string {
	start := 0
	for i := 0; i < len(topic); i++ {
		if topic[i] == '.' {
			out = append(out, topic[start:i])
			start = i + 1
		}
	}
	return append(out, topic[start:])
}

// matchTokens reports whether a split literal topic matches a split pattern.
func matchTokens(topic, pattern []string) bool {
	for i, p := range pattern {
		if p == ">" {
			return len(topic) > i
		}
		if i >= len(topic) || (p != "*" && p != topic[i]) {
			return false
		}
	}
	return len(topic) == len(pattern)
}
