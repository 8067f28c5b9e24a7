//go:build !linux

package testenv

import "os/exec"

// setProcAttr does nothing here: process groups and the parent-death signal
// are Linux features; the server is still killed in cleanup.
func setProcAttr(*exec.Cmd) {}

func killProcessGroup(cmd *exec.Cmd) { _ = cmd.Process.Kill() }
