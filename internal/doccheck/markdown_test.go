package doccheck

import (
	"slices"
	"testing"
)

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
