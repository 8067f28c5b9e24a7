package doccheck

import (
	"slices"
	"strings"
	"testing"
)

// TestDocumentation is the check itself: no documentation file of the
// repository holds a machine-local path or a relative link that does not
// resolve (see the package comment for the rules).
func TestDocumentation(t *testing.T) {
	root, err := Root(".")
	if err != nil {
		t.Fatal(err)
	}
	files, err := Files(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"README.md", "SECURITY.md", "BENCHMARKS.md", "xcaddy.md", "docs/configuration.md", "deploy/README.md"} {
		if !slices.Contains(files, want) {
			t.Errorf("%s is not among the checked files %q", want, files)
		}
	}
	if slices.ContainsFunc(files, func(f string) bool { return strings.Contains(f, "testdata/") }) {
		t.Errorf("a testdata file is checked: %q", files)
	}
	problems, err := Check(root, files)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// TestFixture runs the check on testdata/repo, whose README.md carries the
// scratch path that once leaked into this repository's README ("Measured
// end to end"), and a link of every kind that must fail or pass.
func TestFixture(t *testing.T) {
	root := "testdata/repo"
	files, err := Files(root)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"README.md", "docs/guide.md"}; !slices.Equal(files, want) {
		t.Fatalf("Files = %q, want %q", files, want)
	}
	problems, err := Check(root, files)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range problems {
		got = append(got, p.String())
	}
	want := []string{
		"README.md:4: machine-local path: /tmp/docs/helper-fleet-e2e-BENCHMARKS.md",
		"README.md:7: link to a file that does not exist: docs/missing.md",
		"README.md:7: no heading or anchor #nope in docs/guide.md: docs/guide.md#nope",
		"README.md:8: no heading or anchor #nowhere in README.md: #nowhere",
		"README.md:8: root-relative link (GitHub resolves it against github.com): use a path relative to the file: /docs/guide.md",
		"README.md:14: machine-local path: /root/go/bin",
		"README.md:19: link to a file that does not exist: docs/absent.md",
		"docs/guide.md:11: no heading or anchor #not-a-heading in docs/guide.md: #not-a-heading",
		"docs/guide.md:12: anchor into a file that is not Markdown (only #L<line> works there): ../tool.sh#usage",
		"docs/guide.md:12: link leaves the repository: ../../outside.md",
		"docs/guide.md:15: machine-local path: ${TMPDIR}/caddy-test",
		"docs/guide.md:15: machine-local path: /home/alice/notes",
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

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

// TestAnchors checks heading ids against the ids GitHub gives the same
// headings (several are this repository's own).
func TestAnchors(t *testing.T) {
	for src, want := range map[string]string{
		"# caddy-export-download":   "caddy-export-download",
		"### The demo: `./demo.sh`": "the-demo-demosh",
		"### `invalidate_path` needs the directive's matcher to let DELETE in": "invalidate_path-needs-the-directives-matcher-to-let-delete-in",
		"## Method (`bench/run.sh`, see [bench/README.md](bench/README.md))":   "method-benchrunsh-see-benchreadmemd",
		"### 3. Fleet invalidation latency, 10 nodes":                          "3-fleet-invalidation-latency-10-nodes",
		"## Secrets: `LoadCredential=` and `{file.*}`":                         "secrets-loadcredential-and-file",
		"## What is checked (`deploy/deploy_test.go`)":                         "what-is-checked-deploydeploy_testgo",
		"## Results (full run, 2026-12-01 06:18 UTC, commit fcfca64)":          "results-full-run-2026-12-01-0618-utc-commit-fcfca64",
		"## Bounded staleness (max_staleness)":                                 "bounded-staleness-max_staleness",
		"## In-band invalidation (Cache-Group-Invalidation) ##":                "in-band-invalidation-cache-group-invalidation",
		"## Revocation — how access stops":                                     "revocation--how-access-stops",
		"## **Bold**, _emphasis_ and __init__":                                 "bold-emphasis-and-init",
		"## C++ & Go":                                                          "c--go",
		"## Émigré Ünïcode":                                                    "émigré-ünïcode",
		"## Escaped \\*stars\\* and <code>tags</code>":                         "escaped-stars-and-tags",
		"## [`Cache-Status`](#x) ![logo](logo.png)":                            "cache-status",
	} {
		d := parse(src + "\n")
		if !d.anchors[want] || len(d.anchors) != 1 {
			t.Errorf("%s: anchors %v, want %q", src, d.anchors, want)
		}
	}
}

func TestRepeatedHeadings(t *testing.T) {
	d := parse("# A\n## A\n### A\n## A-1\nB\n-\n")
	want := []string{"a", "a-1", "a-2", "a-1-1", "b"}
	for _, id := range want {
		if !d.anchors[id] {
			t.Errorf("no anchor %q in %v", id, d.anchors)
		}
	}
	if len(d.anchors) != len(want) {
		t.Errorf("anchors %v, want %q", d.anchors, want)
	}
}

// TestLinksOutsideCode checks that code spans (also across lines), fenced
// blocks and comments hold no links, and that the rest do.
func TestLinksOutsideCode(t *testing.T) {
	d := parse("a `x\n[no](a.md)` [yes](b.md)\n~~~\n[no](c.md)\n~~~\n<!-- [no](d.md)\n-->\n" +
		"<a href=\"e.md\">e</a> [ref]: nope\n[ref]: f.md\n``` `[no](g.md)` ```\n")
	var got []string
	for _, l := range d.links {
		got = append(got, l.dest)
	}
	if want := []string{"b.md", "e.md", "f.md"}; !slices.Equal(got, want) {
		t.Errorf("links %q, want %q", got, want)
	}
}
