// Package deploy holds no code: its directory is the deployment kit
// (docker/, systemd/, kubernetes/, prometheus/, grafana/), and its tests
// check every piece of the kit with the real tools: Caddy itself, promtool
// and systemd-analyze.
package deploy
