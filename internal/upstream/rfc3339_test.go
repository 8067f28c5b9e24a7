package upstream

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// utc is a time in UTC, written out: the tables below state instants,
// they do not compute them.
func utc(y int, mo time.Month, d, h, mi, s, ns int) time.Time {
	return time.Date(y, mo, d, h, mi, s, ns, time.UTC)
}

var endOf2016 = utc(2016, 12, 31, 23, 59, 59, 999_999_999)

// expiryAccepted and expiryRefused are expires_at strings with the rule of
// the docs/configuration.md ("The upstream contract") and RFC 3339 §5.6 that accepts or
// refuses each.
var expiryAccepted = []struct {
	in, why string
	want    time.Time
}{
	{"2026-12-01T10:00:00Z", "the plain form", utc(2026, 12, 1, 10, 0, 0, 0)},
	{"2026-12-01t10:00:00z", "t and z may be lowercase (RFC 3339 §5.6 NOTE)", utc(2026, 12, 1, 10, 0, 0, 0)},
	{"2026-12-01t10:00:00Z", "lowercase t alone", utc(2026, 12, 1, 10, 0, 0, 0)},
	{"2026-12-01T10:00:00z", "lowercase z alone", utc(2026, 12, 1, 10, 0, 0, 0)},
	{"2026-12-01T10:00:00.5Z", "a fraction of one digit", utc(2026, 12, 1, 10, 0, 0, 500_000_000)},
	{"2026-12-01T10:00:00.123Z", "milliseconds, as JavaScript writes them", utc(2026, 12, 1, 10, 0, 0, 123_000_000)},
	{"2026-12-01T10:00:00.123456789Z", "nine digits, the most kept", utc(2026, 12, 1, 10, 0, 0, 123_456_789)},
	{"2026-12-01T10:00:00.000000000Z", "nine zeros", utc(2026, 12, 1, 10, 0, 0, 0)},
	{"2026-12-01T12:00:00+02:00", "an offset east", utc(2026, 12, 1, 10, 0, 0, 0)},
	{"2026-12-01T05:30:00-04:30", "an offset west with minutes", utc(2026, 12, 1, 10, 0, 0, 0)},
	{"2026-12-01T10:00:00-00:00", "-00:00 is UTC (RFC 3339 §4.3)", utc(2026, 12, 1, 10, 0, 0, 0)},
	{"2026-12-01T10:00:00+00:00", "+00:00 is UTC", utc(2026, 12, 1, 10, 0, 0, 0)},
	{"2026-12-01T23:59:00+23:59", "the largest offset, hour 23", utc(2026, 12, 1, 0, 0, 0, 0)},
	{"2026-12-02T00:00:00-23:59", "the smallest offset", utc(2026, 12, 2, 23, 59, 0, 0)},
	{"2024-02-29T00:00:00Z", "29 February of a leap year exists", utc(2024, 2, 29, 0, 0, 0, 0)},
	{"2000-02-29T00:00:00Z", "2000 is a leap year", utc(2000, 2, 29, 0, 0, 0, 0)},
	{"2016-12-31T23:59:60Z", "a leap second at the end of a month (RFC 3339 §5.7), read as the minute's last nanosecond", endOf2016},
	{"2016-12-31T15:59:60-08:00", "the same leap second at another offset (§5.7)", endOf2016},
	{"2017-01-01T05:29:60+05:30", "the same leap second at an offset east", endOf2016},
	{"2016-12-31T23:59:60.5Z", "a fraction of a leap second is the same last nanosecond", endOf2016},
	{"2015-06-30T23:59:60Z", "the end of June", utc(2015, 6, 30, 23, 59, 59, 999_999_999)},
	{"2026-04-30T23:59:60Z", "the end of any month: leap seconds are announced only months ahead", utc(2026, 4, 30, 23, 59, 59, 999_999_999)},
	{"1970-01-01T00:00:00Z", "the Unix epoch", utc(1970, 1, 1, 0, 0, 0, 0)},
	{"0000-01-01T00:00:00Z", "year 0000 (date-fullyear is four digits)", utc(0, 1, 1, 0, 0, 0, 0)},
	{"0001-01-01T00:00:00Z", "Go's zero time is an instant long past, not no expiry", utc(1, 1, 1, 0, 0, 0, 1)},
	{"9999-12-31T23:59:59Z", "the last year", utc(9999, 12, 31, 23, 59, 59, 0)},
}
var expiryRefused = []struct{ in, why string }{
	{"2026-12-01T10:00:00,5Z", "a comma is not the fraction separator (time-secfrac is \".\" 1*DIGIT)"},
	{"2026-12-01T10:00:00.1234567890Z", "ten fraction digits: more than the nine a nanosecond holds"},
	{"2026-12-01T10:00:00.Z", "a dot without a digit"},
	{"2026-12-01T10:00:00+24:00", "offset hour 24 (time-numoffset hour is 00-23)"},
	{"2026-12-01T10:00:00-24:00", "offset hour -24"},
	{"2026-12-01T10:00:00+02:60", "offset minute 60"},
	{"2026-12-01T10:00:00+0200", "an offset without its colon"},
	{"2026-12-01T10:00:00+02", "an offset without minutes"},
	{"2026-12-01T10:00:00", "no offset: a local time names no instant"},
	{"2026-12-01T10:00:00ZZ", "a second zone"},
	{"2026-12-01T10:00:00UTC", "a zone name"},
	{"2026-12-01 10:00:00Z", "a space instead of T"},
	{"2026-12-01_10:00:00Z", "another separator instead of T"},
	{"2026-12-01T24:00:00Z", "hour 24"},
	{"2026-12-01T10:60:00Z", "minute 60"},
	{"2026-12-01T10:00:61Z", "second 61"},
	{"2026-12-01T10:00:60Z", "a leap second that is not at the end of a month"},
	{"2016-12-30T23:59:60Z", "a leap second on a day that is not the month's last"},
	{"2016-12-31T23:58:60Z", "a leap second that is not in the last minute"},
	{"2016-12-31T23:59:60+01:00", "23:59:60 at +01:00 is 22:59:60 UTC: not the end of a month"},
	{"2026-02-29T00:00:00Z", "29 February of a year that is not a leap year"},
	{"1900-02-29T00:00:00Z", "1900 is not a leap year"},
	{"2026-04-31T00:00:00Z", "31 April"},
	{"2026-13-01T00:00:00Z", "month 13"},
	{"2026-00-10T00:00:00Z", "month 00"},
	{"2026-12-00T00:00:00Z", "day 00"},
	{"2026-12-32T00:00:00Z", "day 32"},
	{"26-12-01T10:00:00Z", "a two-digit year"},
	{"+2026-12-01T10:00:00Z", "a signed year"},
	{"12026-12-01T10:00:00Z", "a five-digit year"},
	{"2026-12-1T10:00:00Z", "a one-digit day"},
	{"2026-12-01T1:00:00Z", "a one-digit hour"},
	{"2026-12-01T10:00Z", "no seconds"},
	{"2026-12-01", "a date alone"},
	{"20261201T100000Z", "ISO 8601 basic format"},
	{" 2026-12-01T10:00:00Z", "leading whitespace"},
	{"2026-12-01T10:00:00Z ", "trailing whitespace"},
	{"2026-12-01T10:00:00Z\n", "a trailing newline"},
	{"２０２６-12-01T10:00:00Z", "digits that are not ASCII"},
	{"2026-12-01T10:00:00.１Z", "a fraction digit that is not ASCII"},
	{"", "empty"},
}

// TestExpiresAtReadsAsTheREADMEStates checks expires_at against the words of
// the docs/configuration.md ("The upstream contract") and RFC 3339 §5.6, not against
// time.Parse: each row says which rule accepts or refuses the string. A
// refused one makes the body unusable (an upstream failure).
func TestExpiresAtReadsAsTheREADMEStates(t *testing.T) {
	for _, tc := range expiryAccepted {
		a, err := parseExport(bodyWithExpiry(tc.in), testID)
		switch {
		case err != nil:
			t.Errorf("%q (%s): refused: %v", tc.in, tc.why, err)
		case !a.Export.ExpiresAt.Equal(tc.want):
			t.Errorf("%q (%s): read as %v, want %v", tc.in, tc.why, a.Export.ExpiresAt.UTC().Format(time.RFC3339Nano), tc.want.Format(time.RFC3339Nano))
		}
	}
	for _, tc := range expiryRefused {
		if a, err := parseExport(bodyWithExpiry(tc.in), testID); err == nil {
			t.Errorf("%q (%s): accepted as %v", tc.in, tc.why, a.Export.ExpiresAt)
		} else if !strings.Contains(err.Error(), "expires_at") {
			t.Errorf("%q (%s): refused for another reason: %v", tc.in, tc.why, err)
		}
	}
}

// bodyWithExpiry is a usable body whose data.expires_at is the string s.
func bodyWithExpiry(s string) []byte {
	q, _ := json.Marshal(s)
	return []byte(envelope(exportData(`,"expires_at":` + string(q))))
}

// readmeDateTime is the README's grammar for expires_at written as a
// regular expression: the references of the differential tests use it
// instead of parseRFC3339's code.
var readmeDateTime = regexp.MustCompile(`^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)$`)

// referenceExpiry reads expires_at as the README states it, leaning on
// time.Parse only for the ranges of the date and time fields.
func referenceExpiry(s string) (time.Time, bool) {
	m := readmeDateTime.FindStringSubmatch(s)
	if m == nil {
		return time.Time{}, false
	}
	leap := m[3] == "60"
	sec := m[3]
	if leap {
		sec = "59"
	}
	t, err := time.Parse(time.RFC3339Nano, m[1]+"T"+m[2]+":"+sec+m[4]+strings.ToUpper(m[5]))
	if err != nil {
		return time.Time{}, false
	}
	if leap {
		if u := t.UTC(); u.Hour() != 23 || u.Minute() != 59 || u.AddDate(0, 0, 1).Day() != 1 {
			return time.Time{}, false
		}
		u := t.UTC()
		t = time.Date(u.Year(), u.Month(), u.Day(), 23, 59, 59, 999_999_999, time.UTC)
	}
	if t.IsZero() {
		t = t.Add(time.Nanosecond)
	}
	return t, true
}

// TestReferenceExpiryAgrees holds the differential tests' reference to the
// README's words too.
func TestReferenceExpiryAgrees(t *testing.T) {
	for _, tc := range expiryAccepted {
		if got, ok := referenceExpiry(tc.in); !ok || !got.Equal(tc.want) {
			t.Errorf("%q (%s): reference %v %v, want %v", tc.in, tc.why, got, ok, tc.want)
		}
	}
	for _, tc := range expiryRefused {
		if got, ok := referenceExpiry(tc.in); ok {
			t.Errorf("%q (%s): reference accepted %v", tc.in, tc.why, got)
		}
	}
}

func FuzzParseRFC3339MatchesReference(f *testing.F) {
	for _, tc := range expiryAccepted {
		f.Add(tc.in)
	}
	for _, tc := range expiryRefused {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, gotOK := parseRFC3339([]byte(s))
		if gotOK && got.IsZero() {
			got = got.Add(time.Nanosecond)
		}
		want, wantOK := referenceExpiry(s)
		if gotOK != wantOK || !got.Equal(want) {
			t.Fatalf("%q: parseRFC3339 %v %v, reference %v %v", s, got, gotOK, want, wantOK)
		}
		if gotOK && got.Location() != time.UTC {
			t.Fatalf("%q: read in %v, want UTC", s, got.Location())
		}
	})
}
