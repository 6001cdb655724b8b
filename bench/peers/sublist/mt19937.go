package main

// mt19937_64 is the 64-bit Mersenne Twister with the parameters std::mt19937_64 uses (C++
// [rand.predef]), seeded the way its integer-seed constructor seeds it, so that this program
// draws the very numbers bench_topic_index.cpp draws from std::mt19937_64(42).
type mt19937_64 struct {
	state [312]uint64
	index int
}

const (
	mtN         = 312
	mtM         = 156
	mtMatrixA   = 0xb5026f5aa96619e9
	mtUpperMask = 0xffffffff80000000 // the 33 most significant bits (w - r, r = 31)
	mtLowerMask = 0x000000007fffffff
	mtInitMul   = 6364136223846793005
)

func newMT19937_64(seed uint64) *mt19937_64 {
	g := &mt19937_64{index: mtN}
	g.state[0] = seed
	for i := 1; i < mtN; i++ {
		prev := g.state[i-1]
		g.state[i] = mtInitMul*(prev^(prev>>62)) + uint64(i)
	}
	return g
}

func (g *mt19937_64) twist() {
	for i := 0; i < mtN; i++ {
		y := (g.state[i] & mtUpperMask) | (g.state[(i+1)%mtN] & mtLowerMask)
		next := g.state[(i+mtM)%mtN] ^ (y >> 1)
		if y&1 != 0 {
			next ^= mtMatrixA
		}
		g.state[i] = next
	}
	g.index = 0
}

// next returns the next 64-bit output.
func (g *mt19937_64) next() uint64 {
	if g.index >= mtN {
		g.twist()
	}
	y := g.state[g.index]
	g.index++
	y ^= (y >> 29) & 0x5555555555555555
	y ^= (y << 17) & 0x71d67fffeda60000
	y ^= (y << 37) & 0xfff7eee000000000
	y ^= y >> 43
	return y
}
