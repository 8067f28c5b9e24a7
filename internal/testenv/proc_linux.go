package testenv

import (
	"os/exec"
	"syscall"
)

// setProcAttr puts the server in its own process group, so that killing the
// group also stops anything it spawned, and asks the kernel to kill it if
// the test binary dies without running cleanups (e.g. on a -timeout panic).
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func killProcessGroup(cmd *exec.Cmd) {
	// With Setpgid the group id is the child's pid.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Process.Kill()
}

// stopProcessGroup freezes the process and its children (SIGSTOP): a
// redis-server's fork for a snapshot or a full sync stops with it.
func stopProcessGroup(cmd *exec.Cmd) error {
	return syscall.Kill(-cmd.Process.Pid, syscall.SIGSTOP)
}

// continueProcessGroup undoes stopProcessGroup (SIGCONT).
func continueProcessGroup(cmd *exec.Cmd) error {
	return syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
}
