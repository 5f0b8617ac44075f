package redistest

import "syscall"

// sysProcAttr makes the kernel send SIGKILL to the child when the thread
// that started it exits (see spawn for why that thread lives exactly as long
// as the child), so servers die with the test binary even if it is killed.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
