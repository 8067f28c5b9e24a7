package upstream

import "time"

// parseRFC3339 reads an RFC 3339 date-time (RFC 3339 §5.6), as the README
// ("The upstream contract") states it:
//
//	date-time  = full-date ("T" / "t") full-time      ; §5.6 NOTE: t and z may be lowercase
//	full-date  = 4DIGIT "-" 2DIGIT "-" 2DIGIT         ; a day that exists, year 0000-9999
//	full-time  = hour ":" minute ":" second [ "." 1*9DIGIT ] ("Z" / "z" / numoffset)
//	numoffset  = ("+" / "-") hour ":" minute          ; -00:00 is UTC (§4.3)
//
// with hour 00-23, minute 00-59 and second 00-60. The fraction is at most
// nine digits: a nanosecond is the precision a time.Time keeps, so a longer
// one would be cut silently; no usual encoder writes more. A comma is not a
// fraction separator (§5.6, unlike ISO 8601).
//
// A leap second, :60, is accepted where §5.7 places one: the last second
// of a month in UTC (23:59:60Z, or the same instant at another offset). Go's
// clock has no leap seconds: it reads as the last nanosecond of that minute,
// 23:59:59.999999999Z, earlier rather than later, so that an export never
// outlives the expiry the application named.
//
// The instant is returned in UTC: only the instant is used.
func parseRFC3339(s []byte) (time.Time, bool) {
	const (
		minLen = len("2006-01-02T15:04:05Z")
		maxLen = len("2006-01-02T15:04:05.999999999-07:00")
	)
	if len(s) < minLen || len(s) > maxLen {
		return time.Time{}, false
	}
	ok := s[4] == '-' && s[7] == '-' && (s[10] == 'T' || s[10] == 't') && s[13] == ':' && s[16] == ':'
	year := digits(s[0:4], 0, 9999, &ok)
	month := digits(s[5:7], 1, 12, &ok)
	day := digits(s[8:10], 1, 31, &ok)
	hour := digits(s[11:13], 0, 23, &ok)
	minute := digits(s[14:16], 0, 59, &ok)
	second := digits(s[17:19], 0, 60, &ok)
	if !ok || day > daysIn(time.Month(month), year) {
		return time.Time{}, false
	}
	rest := s[19:]

	nsec := 0
	if rest[0] == '.' {
		n := 1
		for n < len(rest) && '0' <= rest[n] && rest[n] <= '9' {
			n++
		}
		if n == 1 || n > 10 {
			return time.Time{}, false // no digit, or more than nine
		}
		nsec = digits(rest[1:n], 0, 999_999_999, &ok)
		for range 10 - n {
			nsec *= 10
		}
		rest = rest[n:]
	}

	var offset int // seconds east of UTC
	switch {
	case len(rest) == 1 && (rest[0] == 'Z' || rest[0] == 'z'):
	case len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':':
		offset = (digits(rest[1:3], 0, 23, &ok)*60 + digits(rest[4:6], 0, 59, &ok)) * 60
		if rest[0] == '-' {
			offset = -offset
		}
	default:
		ok = false
	}
	if !ok {
		return time.Time{}, false
	}

	leap := second == 60
	if leap {
		second, nsec = 59, 999_999_999
	}
	t := time.Date(year, time.Month(month), day, hour, minute, second, nsec, time.UTC).
		Add(-time.Duration(offset) * time.Second)
	if leap && (t.Hour() != 23 || t.Minute() != 59 || t.AddDate(0, 0, 1).Day() != 1) {
		return time.Time{}, false // not the last minute of a month in UTC
	}
	return t, true
}

// digits reads b, ASCII digits only, as a number in [lo, hi]; anything else
// clears ok.
func digits(b []byte, lo, hi int, ok *bool) int {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			*ok = false
			return 0
		}
		n = n*10 + int(c-'0')
	}
	if n < lo || n > hi {
		*ok = false
	}
	return n
}

// daysIn returns the number of days of month in year (proleptic Gregorian).
func daysIn(month time.Month, year int) int {
	return time.Date(year, month+1, 0, 0, 0, 0, 0, time.UTC).Day()
}
