//go:build !linux

package redistest

import "syscall"

// processGone reports whether pid has exited (signal 0 probes, sends nothing).
func processGone(pid int) bool {
	return syscall.Kill(pid, 0) == syscall.ESRCH
}
