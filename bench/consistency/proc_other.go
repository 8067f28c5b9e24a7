//go:build !linux

package main

import "os/exec"

// setProcAttr does nothing here: the parent-death signal is a Linux
// feature; children are still stopped when a run ends normally.
func setProcAttr(*exec.Cmd) {}
