package doccheck

import (
	"regexp"
	"slices"
	"strings"
	"unicode"
)

// allowedLocalPath lets one machine-local path through in one file, for a
// reason a reviewer can judge.
type allowedLocalPath struct {
	file, text, why string
}

// allowedLocalPaths are the explicit exceptions to the machine-local path
// rule: {file, the exact text found, why it is not machine-local}.
var allowedLocalPaths []allowedLocalPath

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
