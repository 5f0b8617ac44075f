package harness

import (
	"math"
	"math/bits"
	"time"
)

// histSubBits sets the histogram's precision: every power-of-two range of
// values is split into 1<<histSubBits buckets, so a recorded value is known
// to within 1/128 (under 0.8%). Values below 256ns are exact.
const histSubBits = 7

// histMaxShift bounds the histogram at about 2^41 ns (36 minutes); larger
// values are counted in the last bucket.
const histMaxShift = 33

const histBuckets = (histMaxShift + 2) << histSubBits

// Histogram records non-negative durations in log-linear buckets without
// allocating, so recording does not disturb the allocation counts the
// benchmark reports. The zero value is empty and ready to use. A Histogram
// is not safe for concurrent use: give each goroutine its own and Merge them.
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    float64
	min    int64
	max    int64
}

func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	if u < 1<<(histSubBits+1) {
		return int(u)
	}
	shift := bits.Len64(u) - histSubBits - 1
	if shift > histMaxShift {
		return histBuckets - 1
	}
	return shift<<histSubBits + int(u>>uint(shift))
}

// bucketValue returns the middle of the values bucket i holds.
func bucketValue(i int) int64 {
	if i < 1<<(histSubBits+1) {
		return int64(i)
	}
	shift := i>>histSubBits - 1
	m := int64(i - shift<<histSubBits)
	lo := m << uint(shift)
	hi := (m+1)<<uint(shift) - 1
	return lo + (hi-lo)/2
}

// Record adds one value; negative values count as 0.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// Merge adds every value recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Count returns the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n }

// Mean returns the mean of the recorded values, 0 when there are none.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Max returns the largest recorded value, 0 when there are none.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Quantile returns the value at quantile q (0 < q <= 1): the smallest
// recorded value such that at least q of all values are no larger, to within
// the bucket's precision (the result is clamped to the recorded min and max).
// It returns 0 when nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	if rank > h.n {
		rank = h.n
	}
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum >= rank {
			if i == histBuckets-1 {
				return time.Duration(h.max) // the overflow bucket has no middle
			}
			v := bucketValue(i)
			if v < h.min {
				v = h.min
			}
			if v > h.max {
				v = h.max
			}
			return time.Duration(v)
		}
	}
	return time.Duration(h.max)
}

// Jain returns Jain's fairness index of counts, (Σx)² / (n·Σx²): 1 when all
// counts are equal, 1/n when one goroutine got everything. It returns 0 for
// no counts or all zero.
func Jain(counts []uint64) float64 {
	var sum, sq float64
	for _, c := range counts {
		x := float64(c)
		sum += x
		sq += x * x
	}
	if sq == 0 {
		return 0
	}
	return sum * sum / (float64(len(counts)) * sq)
}
