package doccheck

import (
	"fmt"
	"html"
	"regexp"
	"strings"
	"unicode"
)

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
