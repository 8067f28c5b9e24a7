package exportdownload

import (
	"os/exec"
	"syscall"
)

// setFleetNodeProcAttr asks the kernel to kill a Caddy node if the test
// binary dies without running its cleanups (e.g. on a -timeout panic), so
// no node outlives the test.
func setFleetNodeProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
