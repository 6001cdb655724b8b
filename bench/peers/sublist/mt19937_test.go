package main

import "testing"

// The C++ standard fixes the 10000th output of a default-constructed std::mt19937_64 (seed 5489).
func TestMT19937_64MatchesTheStandard(t *testing.T) {
	g := newMT19937_64(5489)
	var v uint64
	for i := 0; i < 10000; i++ {
		v = g.next()
	}
	if v != 9981545732273789042 {
		t.Fatalf("10000th output = %d, want 9981545732273789042", v)
	}
}
