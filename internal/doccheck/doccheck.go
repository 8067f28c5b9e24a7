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
	"html"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"unicode"
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

// allowedLocalPath lets one machine-local path through in one file, for a
// reason a reviewer can judge.
type allowedLocalPath struct {
	file, text, why string
}

// allowedLocalPaths are the explicit exceptions to the machine-local path
// rule: {file, the exact text found, why it is not machine-local}.
var allowedLocalPaths []allowedLocalPath

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

// localPathRE finds the start of a machine-local path; localPaths then
// checks what precedes and follows it (Go's regexp has no look-around).
var localPathRE = regexp.MustCompile(
	`/private/var/folders/|/var/folders/|/private/tmp/|/var/tmp/|/dev/shm/|/tmp/|/root/|/home/|/Users/|/work/` +
		`|\$\{?(?:TMPDIR|TMP|TEMP)\}?[/\\]|%(?:TEMP|TMP)%\\`)

// localPaths returns a Problem for every machine-local path in lines.
func localPaths(file string, lines []string) []Problem {
	var problems []Problem
	for i, line := range lines {
		for _, m := range localPathRE.FindAllStringIndex(line, -1) {
			start, end := m[0], m[1]
			if start > 0 && isPathChar(rune(line[start-1])) {
				continue // inside a longer path or a URL: bench/tmp/x, host/tmp/x
			}
			if line[start] == '/' && !startsName(line[end:]) {
				continue // the bare directory, e.g. a tmpfs mount "/tmp/" or "`/home/`"
			}
			word := pathAt(line, start)
			if slices.ContainsFunc(allowedLocalPaths, func(a allowedLocalPath) bool {
				return a.file == file && a.text == word
			}) {
				continue
			}
			problems = append(problems, Problem{File: file, Line: i + 1, Msg: "machine-local path", Text: word})
		}
	}
	return problems
}

func isPathChar(r rune) bool {
	return r < 0x80 && (unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("._-~", r))
}

// startsName reports whether s begins with a file name: a character that
// is not a blank, quote, backtick, bracket or punctuation, or a '.' that is
// not the end of a sentence.
func startsName(s string) bool {
	if s == "" {
		return false
	}
	const stop = " \t`'\"()[]{}<>|,;:!?*"
	if s[0] == '.' {
		return len(s) > 1 && !strings.ContainsRune(stop+".", rune(s[1]))
	}
	if s[0] == '<' {
		return true // a placeholder such as /home/<user>/
	}
	return !strings.ContainsRune(stop, rune(s[0]))
}

// pathAt returns the path starting at line[start:], up to a blank, quote,
// backtick or closing bracket, without a final '.' or ':'.
func pathAt(line string, start int) string {
	p := line[start:]
	if end := strings.IndexAny(p, " \t`'\")]|,;"); end >= 0 {
		p = p[:end]
	}
	return strings.TrimRight(p, ".:") // the end of a sentence
}

var (
	fenceRE    = regexp.MustCompile("^[ \t]*(`{3,}|~{3,})(.*)$")
	atxRE      = regexp.MustCompile(`^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$`)
	setextRE   = regexp.MustCompile(`^ {0,3}(=+|-+)[ \t]*$`)
	notParaRE  = regexp.MustCompile(`^ {0,3}(?:[-*+>|#]|[0-9]+[.)]|$)`)
	inlineRE   = regexp.MustCompile(`\]\(\s*(<[^>\n]*>|[^\s()]*)`)
	refDefRE   = regexp.MustCompile(`^ {0,3}\[[^\]]+\]:[ \t]*(<[^>]*>|\S+)`)
	attrLinkRE = regexp.MustCompile(`(?i)<[a-z][^>]*?\s(?:href|src)\s*=\s*"([^"]*)"`)
	attrIDRE   = regexp.MustCompile(`(?i)<[a-z][^>]*?\s(?:id|name)\s*=\s*"([^"]*)"`)
)

// parse reads a Markdown file's links and anchors.
func parse(text string) *doc {
	lines := strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n")
	d := &doc{lines: lines, anchors: map[string]bool{}}
	masked := maskCode(lines)
	used := map[string]int{}
	addHeading := func(raw string) {
		// As GitHub's slugger: a repeated id gets -1, -2, …, and the
		// ids made so count as used too.
		base := slug(headingText(raw))
		id := base
		for _, ok := used[id]; ok; _, ok = used[id] {
			used[base]++
			id = fmt.Sprintf("%s-%d", base, used[base])
		}
		used[id] = 0
		d.anchors[id] = true
	}
	for i, line := range masked {
		if line == fenceMark {
			continue
		}
		if m := atxRE.FindStringSubmatch(lines[i]); m != nil {
			addHeading(m[2])
		} else if i > 0 && masked[i-1] != fenceMark && setextRE.MatchString(line) &&
			!notParaRE.MatchString(lines[i-1]) && atxRE.FindStringSubmatch(lines[i-1]) == nil {
			addHeading(strings.TrimSpace(lines[i-1]))
		}
		for _, m := range inlineRE.FindAllStringSubmatch(line, -1) {
			d.links = append(d.links, link{i + 1, strings.Trim(m[1], "<>")})
		}
		if m := refDefRE.FindStringSubmatch(line); m != nil {
			d.links = append(d.links, link{i + 1, strings.Trim(m[1], "<>")})
		}
		for _, m := range attrLinkRE.FindAllStringSubmatch(line, -1) {
			d.links = append(d.links, link{i + 1, html.UnescapeString(m[1])})
		}
		for _, m := range attrIDRE.FindAllStringSubmatch(line, -1) {
			d.anchors[m[1]] = true
		}
	}
	return d
}

// fenceMark replaces every line of a fenced code block (fences included) in
// maskCode's result.
const fenceMark = "\x00fence"

// maskCode returns lines with fenced code blocks replaced by fenceMark, and
// code spans and HTML comments blanked (a code span or a comment may run
// over several lines of a paragraph, so this works on the text, not line by
// line).
func maskCode(lines []string) []string {
	out := make([]string, len(lines))
	var fence string // the open fence's run of ` or ~, or ""
	var para []int   // indexes of the current run of non-fence lines
	flush := func() {
		if len(para) == 0 {
			return
		}
		texts := make([]string, len(para))
		for j, i := range para {
			texts[j] = lines[i]
		}
		for j, t := range strings.Split(maskSpans(strings.Join(texts, "\n")), "\n") {
			out[para[j]] = t
		}
		para = para[:0]
	}
	for i, line := range lines {
		if fence != "" {
			out[i] = fenceMark
			t := strings.TrimSpace(line)
			if strings.HasPrefix(t, fence) && strings.Trim(t, fence[:1]) == "" {
				fence = ""
			}
			continue
		}
		if m := fenceRE.FindStringSubmatch(line); m != nil && !(m[1][0] == '`' && strings.Contains(m[2], "`")) {
			flush()
			fence = m[1]
			out[i] = fenceMark
			continue
		}
		para = append(para, i)
	}
	flush()
	return out
}

// maskSpans blanks code spans and HTML comments in text, keeping newlines
// (and so line numbers). A code span does not cross a blank line.
func maskSpans(text string) string {
	b := []byte(text)
	blank := func(from, to int) {
		for k := from; k < to; k++ {
			if b[k] != '\n' {
				b[k] = ' '
			}
		}
	}
	for i := 0; i < len(b); {
		switch {
		case strings.HasPrefix(string(b[i:]), "<!--"):
			end := strings.Index(string(b[i:]), "-->")
			if end < 0 {
				end = len(b) - i - 3
			}
			blank(i, i+end+3)
			i += end + 3
		case b[i] == '\\' && i+1 < len(b):
			i += 2
		case b[i] == '`':
			n := runLen(b, i, '`')
			closing := findRun(b, i+n, n)
			if closing < 0 || strings.Contains(string(b[i:closing]), "\n\n") {
				i += n // a literal run of backticks
				continue
			}
			blank(i, closing+n)
			i = closing + n
		default:
			i++
		}
	}
	return string(b)
}

func runLen(b []byte, i int, c byte) int {
	n := 0
	for i+n < len(b) && b[i+n] == c {
		n++
	}
	return n
}

// findRun returns the index of the next run of exactly n backticks at or
// after i, or -1.
func findRun(b []byte, i, n int) int {
	for i < len(b) {
		if b[i] != '`' {
			i++
			continue
		}
		m := runLen(b, i, '`')
		if m == n {
			return i
		}
		i += m
	}
	return -1
}

var (
	imageRE   = regexp.MustCompile(`!\[[^\]]*\]\([^)]*\)`)
	linkRE    = regexp.MustCompile(`\[([^\]]*)\](?:\([^)]*\)|\[[^\]]*\])`)
	autoRE    = regexp.MustCompile(`<((?:https?|mailto):[^>]*)>`)
	tagRE     = regexp.MustCompile(`</?[A-Za-z][^>]*>`)
	emphUndRE = regexp.MustCompile(`(^|[\s\p{Pd}\p{Ps}\p{Pe}\p{Pi}\p{Pf}\p{Po}])_+|_+([\s\p{Pd}\p{Ps}\p{Pe}\p{Pi}\p{Pf}\p{Po}]|$)`) // _emphasis_, not snake_case
)

// headingText returns the text GitHub renders for a heading's source: code
// spans keep their content, links their text, images and tags nothing.
func headingText(src string) string {
	// Code spans first: their content is literal, so it is set aside while
	// the rest loses its markup.
	var codes []string
	var rest strings.Builder
	b := []byte(src)
	for i := 0; i < len(b); {
		switch {
		case b[i] == '\\' && i+1 < len(b):
			rest.Write(b[i : i+2])
			i += 2
		case b[i] == '`':
			n := runLen(b, i, '`')
			closing := findRun(b, i+n, n)
			if closing < 0 {
				rest.Write(b[i : i+n])
				i += n
				continue
			}
			code := string(b[i+n : closing])
			if len(code) > 2 && code[0] == ' ' && code[len(code)-1] == ' ' {
				code = code[1 : len(code)-1]
			}
			fmt.Fprintf(&rest, "\x00%d\x00", len(codes))
			codes = append(codes, code)
			i = closing + n
		default:
			rest.WriteByte(b[i])
			i++
		}
	}
	s := plainText(rest.String())
	for i, code := range codes {
		s = strings.Replace(s, fmt.Sprintf("\x00%d\x00", i), code, 1)
	}
	return strings.TrimSpace(s)
}

var escapeRE = regexp.MustCompile(`\\([!-/:-@\[-` + "`" + `{-~])`)

// plainText strips inline markup other than code spans.
func plainText(s string) string {
	s = imageRE.ReplaceAllString(s, "")
	s = linkRE.ReplaceAllString(s, "$1")
	s = autoRE.ReplaceAllString(s, "$1")
	s = tagRE.ReplaceAllString(s, "")
	s = emphUndRE.ReplaceAllString(s, "$1$2")
	s = escapeRE.ReplaceAllString(s, "$1")
	return html.UnescapeString(s)
}

// slug makes a heading's anchor from its text as GitHub does.
func slug(text string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(text) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) || unicode.IsMark(r):
			b.WriteRune(r)
		}
	}
	return b.String()
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
