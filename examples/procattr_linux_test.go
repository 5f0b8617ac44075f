package examples_test

import "syscall"

// sysProcAttr makes the kernel kill a worker when the thread that started
// it exits, so workers do not outlive a killed test binary. (Go keeps its
// threads for the process's life unless a goroutine exits while locked to
// one, which these tests never do.)
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
