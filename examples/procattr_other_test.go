//go:build !linux

package examples_test

import "syscall"

// sysProcAttr has no parent-death signal outside Linux: workers exit at
// the end of their input when the test closes it, or are killed in
// t.Cleanup.
func sysProcAttr() *syscall.SysProcAttr { return nil }
