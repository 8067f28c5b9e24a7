package doccheck

import (
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

var (
	schemeRE     = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)
	lineAnchorRE = regexp.MustCompile(`^L[0-9]+(-L[0-9]+)?$`)
)

// resolve returns what is wrong with dest as a link in file from, or "".
func (c *checker) resolve(from, dest string) string {
	if dest == "" {
		return "empty link"
	}
	if schemeRE.MatchString(dest) || strings.HasPrefix(dest, "//") {
		return ""
	}
	if strings.HasPrefix(dest, "/") {
		return "root-relative link (GitHub resolves it against github.com): use a path relative to the file"
	}
	target, frag, _ := strings.Cut(dest, "#")
	target, _, _ = strings.Cut(target, "?")
	target, err := url.PathUnescape(target)
	if err != nil {
		return "link with a bad percent-encoding"
	}
	rel := from
	if target != "" {
		rel = path.Join(path.Dir(from), target)
		if rel == ".." || strings.HasPrefix(rel, "../") {
			return "link leaves the repository"
		}
		info, err := os.Stat(filepath.Join(c.root, filepath.FromSlash(rel)))
		if err != nil {
			return "link to a file that does not exist"
		}
		if info.IsDir() {
			if frag == "" {
				return ""
			}
			rel = path.Join(rel, "README.md")
			if _, err := os.Stat(filepath.Join(c.root, filepath.FromSlash(rel))); err != nil {
				return "anchor into a directory without a README.md"
			}
		}
	}
	if frag == "" {
		return ""
	}
	if !strings.HasSuffix(rel, ".md") {
		if lineAnchorRE.MatchString(frag) {
			return ""
		}
		return "anchor into a file that is not Markdown (only #L<line> works there)"
	}
	d, err := c.load(rel)
	if err != nil {
		return "cannot read the link's target: " + err.Error()
	}
	if frag, err = url.PathUnescape(frag); err != nil || !d.anchors[frag] {
		return "no heading or anchor " + "#" + frag + " in " + rel
	}
	return ""
}
