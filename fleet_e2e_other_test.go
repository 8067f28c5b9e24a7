//go:build !linux

package exportdownload

import "os/exec"

// setFleetNodeProcAttr does nothing here: the parent-death signal is a
// Linux feature; the nodes are still killed in cleanup.
func setFleetNodeProcAttr(*exec.Cmd) {}
