//go:build !linux

package testenv

import (
	"errors"
	"os/exec"
)

// setProcAttr does nothing here: process groups and the parent-death signal
// are Linux features; the server is still killed in cleanup.
func setProcAttr(*exec.Cmd) {}

func killProcessGroup(cmd *exec.Cmd) { _ = cmd.Process.Kill() }

var errNoPause = errors.New("pausing a process (SIGSTOP) is supported on Linux only")

func stopProcessGroup(*exec.Cmd) error { return errNoPause }

func continueProcessGroup(*exec.Cmd) error { return errNoPause }
