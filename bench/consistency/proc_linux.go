package main

import (
	"os/exec"
	"syscall"
)

// setProcAttr asks the kernel to kill a child (redis-server, a Caddy node)
// if this program dies without stopping it, so that none outlives a run.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
