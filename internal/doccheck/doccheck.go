// Package doccheck finds two kinds of mistake in the repository's Markdown
// documentation that only show on another machine: a machine-local path, and
// a relative link that does not resolve. Its test runs the check on the
// repository as part of `go test ./...`.
//
// # Which files
//
// Every *.md file under the repository root (README.md, SECURITY.md,
// BENCHMARKS.md, xcaddy.md, docs/, deploy/, bench/, examples/, …), except in
// directories named testdata or vendor, and in hidden directories (.git).
//
// # Machine-local paths
//
// A line is refused when it holds a path into one of these directories:
//
//   - temporary directories: /tmp/, /var/tmp/, /dev/shm/, /private/tmp/,
//     /var/folders/ and /private/var/folders/ (macOS), and paths under the
//     variables $TMPDIR, $TMP and $TEMP (also as ${…}) or %TEMP% and %TMP%;
//   - home directories: /root/, /home/<user>/, /Users/<user>/;
//   - /work/, the workspace of the machine this project is built on.
//
// "A path into" means the directory name followed by a character that can
// start a file name: a bare directory name such as a container's tmpfs mount
// `/tmp`, or "/tmp/" followed by a blank, quote, backtick, bracket or
// punctuation, is not a path into it and passes. The directory name must
// start a path: /tmp/x inside https://example.com/tmp/x or bench/tmp/x is
// not refused. Fenced code blocks are checked like prose: a command that
// writes to a temporary directory of one machine is as useless to the reader
// as a sentence that cites one. Every other absolute path (/etc/caddy,
// /var/lib/caddy, /run/secrets/…, /usr/bin/caddy) names the same place on
// every machine the documentation is for, and passes anywhere. The only
// other exceptions are the entries of allowedLocalPaths, each a file, the
// exact text and the reason; there is none today.
//
// # Relative links
//
// Inline links and images ([text](dest), ![alt](dest)), reference
// definitions ([label]: dest) and href/src attributes of HTML tags are
// checked, outside fenced code blocks, code spans and HTML comments. A
// destination with a scheme (https:, mailto:) or starting with // is not
// checked. Any other destination must resolve the way GitHub resolves it
// when it renders the file:
//
//   - a path (percent-decoding applied, a ?query ignored) relative to the
//     file's directory, which must stay inside the repository and exist,
//     as a file or a directory; a path starting with / is refused, since
//     GitHub resolves it against github.com, not the repository;
//   - a #fragment into a Markdown file (or a directory, meaning its
//     README.md) must be one of that file's anchors; a fragment into another
//     file may only be a GitHub line anchor (#L12, #L12-L20);
//   - a file's anchors are its headings' ids, made as GitHub makes them:
//     the heading's text (code spans keep their content, links their text,
//     images and HTML tags nothing), lowercased, every character that is not
//     a letter, a number, a mark, '-', '_' or a space removed, each space
//     made '-', and a repeated id suffixed -1, -2, … in document order; plus
//     the id or name attributes of HTML tags. ATX (#) and setext (=== / ---)
//     headings count; headings inside code blocks do not.
//
// Every problem is reported as file:line, what is wrong and the offending
// text.
package doccheck

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Problem is one mistake at one line of a documentation file.
type Problem struct {
	File string // slash-separated, relative to the repository root
	Line int    // 1-based
	Msg  string // what is wrong
	Text string // the offending text, as written
}

func (p Problem) String() string {
	return fmt.Sprintf("%s:%d: %s: %s", p.File, p.Line, p.Msg, p.Text)
}

// Files returns the documentation files under root, slash-separated and
// relative to it, sorted: every *.md file outside testdata, vendor and
// hidden directories.
func Files(root string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".md") {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	slices.Sort(files)
	return files, err
}

// Check returns the problems of files (as Files names them) under root, in
// file and line order.
func Check(root string, files []string) ([]Problem, error) {
	c := &checker{root: root, docs: map[string]*doc{}}
	var problems []Problem
	for _, f := range files {
		d, err := c.load(f)
		if err != nil {
			return nil, err
		}
		problems = append(problems, localPaths(f, d.lines)...)
		for _, l := range d.links {
			if msg := c.resolve(f, l.dest); msg != "" {
				problems = append(problems, Problem{File: f, Line: l.line, Msg: msg, Text: l.dest})
			}
		}
	}
	slices.SortStableFunc(problems, func(a, b Problem) int {
		if a.File != b.File {
			return strings.Compare(a.File, b.File)
		}
		return a.Line - b.Line
	})
	return problems, nil
}

// doc is a parsed Markdown file: its lines, its links and its anchors.
type doc struct {
	lines   []string
	links   []link
	anchors map[string]bool
}

type link struct {
	line int
	dest string
}

type checker struct {
	root string
	docs map[string]*doc // by slash path relative to root
}

func (c *checker) load(rel string) (*doc, error) {
	if d, ok := c.docs[rel]; ok {
		return d, nil
	}
	b, err := os.ReadFile(filepath.Join(c.root, filepath.FromSlash(rel)))
	if err != nil {
		return nil, err
	}
	d := parse(string(b))
	c.docs[rel] = d
	return d, nil
}

// ErrNoRoot is returned by Root when no go.mod is found above dir.
var ErrNoRoot = errors.New("doccheck: no go.mod above the directory")

// Root returns the nearest directory at or above dir that holds go.mod.
func Root(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", ErrNoRoot
		}
		dir = parent
	}
}
