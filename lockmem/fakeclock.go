package lockmem

import (
	"container/heap"
	"sync"
	"time"

	"github.com/klauthed/lock"
)

// FakeClock is a lock.TimerClock whose time moves only when Advance is
// called, for tests. It is safe for concurrent use. Make one with
// NewFakeClock; a FakeClock must not be copied.
type FakeClock struct {
	advance sync.Mutex // serialises Advance

	mu     sync.Mutex
	now    time.Time
	seq    uint64
	timers timerHeap
}

var _ lock.TimerClock = (*FakeClock)(nil)

// NewFakeClock returns a FakeClock that reads start until advanced.
func NewFakeClock(start time.Time) *FakeClock {
	return &FakeClock{now: start}
}

// Now returns the clock's current time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc arranges for f to be called in its own goroutine once the clock
// has been advanced by d or more; with d <= 0, f is started at once. The
// returned stop cancels the call and reports whether it did so before f was
// started.
func (c *FakeClock) AfterFunc(d time.Duration, f func()) (stop func() bool) {
	if d <= 0 {
		go f()
		return func() bool { return false }
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &fakeTimer{when: c.now.Add(d), seq: c.seq, f: f}
	heap.Push(&c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if t.index < 0 {
			return false
		}
		heap.Remove(&c.timers, t.index)
		return true
	}
}

// Advance moves the clock forward by d (a negative d counts as zero). The
// functions of AfterFunc calls that fall due run in the order of their due
// times, each in its own goroutine with the clock set to its due time, and
// Advance waits for each to return before running the next and before it
// returns. So when Advance returns, every lockmem waiter whose holder
// expired has been handed its lease. A function it runs must not call
// Advance. Concurrent calls to Advance run one after the other.
func (c *FakeClock) Advance(d time.Duration) {
	c.advance.Lock()
	defer c.advance.Unlock()
	c.mu.Lock()
	target := c.now.Add(max(d, 0))
	c.mu.Unlock()
	for {
		c.mu.Lock()
		if len(c.timers) == 0 || c.timers[0].when.After(target) {
			c.now = target
			c.mu.Unlock()
			return
		}
		t := heap.Pop(&c.timers).(*fakeTimer)
		if t.when.After(c.now) {
			c.now = t.when
		}
		c.mu.Unlock()
		done := make(chan struct{})
		go func() {
			defer close(done)
			t.f()
		}()
		<-done
	}
}

// pending returns the number of AfterFunc calls waiting to fall due.
func (c *FakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

type fakeTimer struct {
	when  time.Time
	seq   uint64
	f     func()
	index int // in the heap; -1 once out of it
}

type timerHeap []*fakeTimer

func (h timerHeap) Len() int { return len(h) }

func (h timerHeap) Less(i, j int) bool {
	if !h[i].when.Equal(h[j].when) {
		return h[i].when.Before(h[j].when)
	}
	return h[i].seq < h[j].seq
}

func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *timerHeap) Push(x any) {
	t := x.(*fakeTimer)
	t.index = len(*h)
	*h = append(*h, t)
}

func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.index = -1
	return t
}
