// sublist runs bench_topic_index.cpp's matching workloads on NATS's own subscription matcher,
// the Sublist of nats-server (github.com/nats-io/nats-server/v2/server, from the Debian package
// golang-github-nats-io-nats-server-dev), and prints one line on stdout: "ns_per_match
// cache_hit_rate". bench_topic_index runs it once per repetition, interleaved with herald.
//
//	sublist -workload=mixed|padded -patterns=N [-cache] [-budget-ms=B]
//	        [-fingerprint=HEX] [-expect-matches=M]
//	sublist -version        prints the nats-server version it was built with
//
// mixed is make_workload(N, 42) of bench_topic_index.cpp, padded is padded_workload(N) (the
// 10-pattern workload plus only non-matching patterns), rebuilt here draw for draw from the same
// std::mt19937_64 sequence. -fingerprint (FNV-1a 64 of the patterns and probes, computed by the
// C++ side) proves the two programs built the same workload; -expect-matches is how many
// subscriptions herald's TopicIndex found over one pass of the 4096 probes: the sublist must find
// exactly as many. Either mismatch fails the run, non-zero, naming the contender.
//
// -cache uses NewSublistWithCache (NATS's default: a 1024-entry result cache, swept back to 512
// when it overflows), otherwise NewSublistNoCache. The probes are cycled in order in batches of
// 256, timed with the process's CPU time, so the garbage collector's work for the results Match
// allocates counts too; one untimed pass over every probe comes first.
//
// The Sublist takes the server's unexported *subscription; this program makes them through
// reflection on Sublist.Insert's parameter type, setting only the subject (no queue group, no
// client), which is all Insert and Match read for plain subscriptions.
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"reflect"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"github.com/nats-io/nats-server/v2/server"
)

const contender = "NATS sublist"

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAILED %s: %s\n", contender, fmt.Sprintf(format, args...))
	os.Exit(1)
}

const clockProcessCPUTimeID = 2 // CLOCK_PROCESS_CPUTIME_ID

func processCPU() time.Duration {
	var ts syscall.Timespec
	_, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockProcessCPUTimeID,
		uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		fail("clock_gettime: %v", errno)
	}
	return time.Duration(ts.Nano())
}

// subscriptions makes the server's unexported subscription values and counts Match's results.
type subscriptions struct {
	subType   reflect.Type // *server.subscription
	subject   uintptr      // offset of subscription.subject ([]byte)
	psubs     uintptr      // offset of SublistResult.psubs (a slice of *subscription)
	qsubs     uintptr      // offset of SublistResult.qsubs (a slice of slices)
	insertArg []reflect.Value
}

func field(t reflect.Type, name string, kind reflect.Kind) uintptr {
	f, ok := t.FieldByName(name)
	if !ok || f.Type.Kind() != kind {
		fail("this nats-server has no %s field %s.%s; the benchmark needs updating", kind, t, name)
	}
	return f.Offset
}

func newSubscriptions(sl *server.Sublist) *subscriptions {
	s := &subscriptions{subType: reflect.TypeOf(sl.Insert).In(0), insertArg: make([]reflect.Value, 1)}
	if s.subType.Kind() != reflect.Pointer || s.subType.Elem().Kind() != reflect.Struct {
		fail("Sublist.Insert does not take a pointer to a struct in this nats-server")
	}
	s.subject = field(s.subType.Elem(), "subject", reflect.Slice)
	result := reflect.TypeOf(server.SublistResult{})
	s.psubs = field(result, "psubs", reflect.Slice)
	s.qsubs = field(result, "qsubs", reflect.Slice)
	return s
}

func (s *subscriptions) insert(sl *server.Sublist, subject string) {
	sub := reflect.New(s.subType.Elem())
	*(*[]byte)(unsafe.Add(sub.UnsafePointer(), s.subject)) = []byte(subject)
	s.insertArg[0] = sub
	if err := reflect.ValueOf(sl.Insert).Call(s.insertArg)[0]; !err.IsNil() {
		fail("Insert(%q): %v", subject, err.Interface())
	}
}

// count is how many subscriptions a match result holds.
func (s *subscriptions) count(r *server.SublistResult) int {
	p := unsafe.Pointer(r)
	return len(*(*[]unsafe.Pointer)(unsafe.Add(p, s.psubs))) +
		len(*(*[][]unsafe.Pointer)(unsafe.Add(p, s.qsubs)))
}

func cacheHits(sl *server.Sublist) float64 {
	st := sl.Stats()
	return math.Round(st.CacheHitRate * float64(st.NumMatches))
}

func main() {
	kind := flag.String("workload", "mixed", "mixed | padded")
	n := flag.Int("patterns", 1000, "patterns registered")
	cache := flag.Bool("cache", false, "use the sublist's result cache (NATS's default)")
	budgetMs := flag.Int("budget-ms", 200, "CPU time to spend matching")
	want := flag.String("fingerprint", "", "expected FNV-1a 64 of the workload, hex")
	expect := flag.Int64("expect-matches", -1, "subscriptions one pass over the probes must find")
	version := flag.Bool("version", false, "print the nats-server version and exit")
	flag.Parse()
	if *version {
		fmt.Println(server.VERSION)
		return
	}
	if *n < 1 {
		fail("-patterns must be at least 1")
	}

	var w workload
	switch *kind {
	case "mixed":
		w = makeWorkload(*n, 42)
	case "padded":
		w = paddedWorkload(*n)
	default:
		fail("unknown -workload=%q (mixed | padded)", *kind)
	}
	if *want != "" {
		if got := strconv.FormatUint(w.fingerprint(), 16); got != *want {
			fail("workload %s/%d has fingerprint %s, the C++ side built %s: the generators differ",
				*kind, *n, got, *want)
		}
	}

	var sl *server.Sublist
	if *cache {
		sl = server.NewSublistWithCache()
	} else {
		sl = server.NewSublistNoCache()
	}
	subs := newSubscriptions(sl)
	for _, p := range w.patterns {
		subs.insert(sl, p)
	}
	if int(sl.Count()) != len(w.patterns) {
		fail("%d patterns inserted, the sublist counts %d", len(w.patterns), sl.Count())
	}

	// One untimed pass: checks the results against herald's and warms up.
	var found int64
	for _, p := range w.probes {
		found += int64(subs.count(sl.Match(p)))
	}
	if *expect >= 0 && found != *expect {
		fail("one pass over the %d probes of %s/%d found %d subscriptions, herald's TopicIndex %d",
			len(w.probes), *kind, *n, found, *expect)
	}

	const batch = 256
	mask := len(w.probes) - 1
	budget := time.Duration(*budgetMs) * time.Millisecond
	hits0, matches0 := cacheHits(sl), float64(sl.Stats().NumMatches)
	var total time.Duration
	var done int
	sink := 0
	for i := 0; total < budget || done == 0; {
		t := processCPU()
		for k := 0; k < batch; k++ {
			sink += subs.count(sl.Match(w.probes[i&mask]))
			i++
		}
		total += processCPU() - t
		done += batch
	}
	if sink < 0 {
		fmt.Fprintln(os.Stderr, sink)
	}
	hitRate := 0.0
	if m := float64(sl.Stats().NumMatches) - matches0; m > 0 {
		hitRate = (cacheHits(sl) - hits0) / m
	}
	fmt.Printf("%.6g %.4g\n", float64(total.Nanoseconds())/float64(done), hitRate)
}
