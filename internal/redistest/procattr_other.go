//go:build !linux

package redistest

import "syscall"

// sysProcAttr returns nil: Pdeathsig exists only on Linux. Elsewhere a
// server outlives a test binary that is killed before its cleanups run.
func sysProcAttr() *syscall.SysProcAttr { return nil }
