package lock

import "time"

// Clock tells the time. Backends that keep time themselves (lockmem) take one
// so tests can drive time; the zero value of their options means SystemClock.
type Clock interface {
	Now() time.Time
}

// TimerClock is a Clock that can also run a function after a duration of its
// own time. A backend given a Clock that is not a TimerClock falls back to
// real timers for waking waiters.
type TimerClock interface {
	Clock
	// AfterFunc calls f in its own goroutine once d has passed on this clock.
	// stop cancels the call and reports whether it did so before f started.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// SystemClock is the real time, through package time.
var SystemClock TimerClock = systemClock{}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}
