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
