package doccheck

import (
	"testing"
)

func TestLocalPaths(t *testing.T) {
	refused := map[string]string{
		"see /tmp/docs/x.md for it":            "/tmp/docs/x.md",
		"in /var/tmp/a.":                       "/var/tmp/a",
		"`/root/go/bin/versitygw`":             "/root/go/bin/versitygw",
		"(/home/alice/src)":                    "/home/alice/src",
		"/home/<user>/.cache":                  "/home/<user>/.cache",
		"/Users/bob/x":                         "/Users/bob/x",
		"/work/main/README.md":                 "/work/main/README.md",
		"$TMPDIR/x":                            "$TMPDIR/x",
		"cd ${TMP}/caddy":                      "${TMP}/caddy",
		"file:///tmp/x":                        "/tmp/x",
		"-D /tmp/tmp.Ab12/hdrs.txt":            "/tmp/tmp.Ab12/hdrs.txt",
		"/tmp/.X11-unix":                       "/tmp/.X11-unix",
		"/dev/shm/x":                           "/dev/shm/x",
		"/private/var/folders/xy/T/go-build1":  "/private/var/folders/xy/T/go-build1",
		`%TEMP%\caddy`:                         `%TEMP%\caddy`,
		"output=/tmp/caddy":                    "/tmp/caddy",
		"| `go build -o /tmp/c ./cmd/caddy` |": "/tmp/c",
	}
	for line, want := range refused {
		got := localPaths("x.md", []string{line})
		if len(got) != 1 || got[0].Text != want || got[0].Line != 1 {
			t.Errorf("%q: got %v, want one problem naming %q", line, got, want)
		}
	}
	allowed := []string{
		"tmpfs for `/data`, `/config` and `/tmp`",
		"temporary directories such as `/tmp/` are refused",
		"the bare /tmp/ directory.",
		"https://example.com/tmp/x and http://host:8080/work/x",
		"bench/tmp/x",
		"/var/lib/caddy and /etc/caddy/Caddyfile and /run/secrets/redis_password",
		"the $TMPDIR variable, ~/.aws/credentials, $HOME/.config",
		"/home, /homeward/x, /workspace/x, /tmpfs/x, /rooted/x",
	}
	for _, line := range allowed {
		if got := localPaths("x.md", []string{line}); len(got) != 0 {
			t.Errorf("%q: refused: %v", line, got)
		}
	}
}

func TestAllowedLocalPaths(t *testing.T) {
	saved := allowedLocalPaths
	t.Cleanup(func() { allowedLocalPaths = saved })
	allowedLocalPaths = []allowedLocalPath{{"a.md", "/tmp/x", "a test"}}
	if got := localPaths("a.md", []string{"/tmp/x and /tmp/y"}); len(got) != 1 || got[0].Text != "/tmp/y" {
		t.Errorf("in a.md: %v, want only /tmp/y", got)
	}
	if got := localPaths("b.md", []string{"/tmp/x"}); len(got) != 1 {
		t.Errorf("in b.md: %v, want /tmp/x refused (the exception is for a.md)", got)
	}
}
