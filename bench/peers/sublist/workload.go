package main

import (
	"hash/fnv"
	"math"
	"strconv"
	"strings"
)

// workload is bench_topic_index.cpp's: the patterns to register and the probe topics to match.
type workload struct {
	patterns []string
	probes   []string // 4096 of them
}

func token(stem string, i uint64) string { return stem + strconv.FormatUint(i, 10) }

// makeWorkload replicates make_workload(n, seed) of bench_topic_index.cpp draw for draw:
// 4-token patterns "svcA.regionB.entityC.keyD", ~10% with one '*' in tokens 2-4, ~10% ending in
// '>'; half the probes are stored patterns with their wildcards filled in, half share a stored
// service and region and then leave every alphabet.
func makeWorkload(n int, seed uint64) workload {
	rng := newMT19937_64(seed)
	pick := func(k uint64) uint64 { return rng.next() % k }
	const services = 8
	k := uint64(math.Cbrt(4.0 * float64(n) / services))
	if k < 2 {
		k = 2
	}
	var w workload
	for i := 0; i < n; i++ {
		var t [4]string
		t[0] = token("svc", pick(services))
		t[1] = token("region", pick(k))
		t[2] = token("entity", pick(k))
		t[3] = token("key", pick(k))
		shape := pick(10)
		if shape == 0 {
			t[1+pick(3)] = "*"
		}
		if shape == 1 {
			t[3] = ">"
		}
		w.patterns = append(w.patterns, strings.Join(t[:], "."))
	}
	const probes = 4096
	for i := 0; i < probes; i++ {
		var t [4]string
		if i%2 == 0 { // a hit: a stored pattern with its wildcards filled in
			copy(t[:], strings.Split(w.patterns[pick(uint64(n))], "."))
			if t[1] == "*" {
				t[1] = token("region", pick(k))
			}
			if t[2] == "*" {
				t[2] = token("entity", pick(k))
			}
			if t[3] == "*" || t[3] == ">" {
				t[3] = token("key", pick(k))
			}
		} else { // a miss
			t[0] = token("svc", pick(services))
			t[1] = token("region", pick(k))
			t[2] = token("noentity", pick(k))
			t[3] = token("nokey", pick(k))
		}
		w.probes = append(w.probes, strings.Join(t[:], "."))
	}
	return w
}

// paddedWorkload replicates padded_workload(n): the 10-pattern workload (same probes) plus n - 10
// literal patterns that no probe matches, half extending the probes' own 3-token prefixes, half
// in subtrees of their own.
func paddedWorkload(n int) workload {
	base := makeWorkload(10, 42)
	w := workload{patterns: append([]string(nil), base.patterns...), probes: base.probes}
	for i := 0; len(w.patterns) < n; i++ {
		var p string
		if i%2 == 0 {
			probe := w.probes[(i/2)%len(w.probes)]
			p = probe[:strings.LastIndexByte(probe, '.')] + ".filler"
		} else {
			p = token("other", uint64(i%1000)) + "." + token("r", uint64((i/1000)%100)) + ".e.k"
		}
		w.patterns = append(w.patterns, p+strconv.Itoa(i))
	}
	return w
}

// fingerprint is FNV-1a 64 over every pattern, then every probe, each followed by '\n':
// bench_topic_index computes the same to prove both programs built the same workload.
func (w workload) fingerprint() uint64 {
	h := fnv.New64a()
	for _, s := range w.patterns {
		h.Write([]byte(s))
		h.Write([]byte{'\n'})
	}
	for _, s := range w.probes {
		h.Write([]byte(s))
		h.Write([]byte{'\n'})
	}
	return h.Sum64()
}
