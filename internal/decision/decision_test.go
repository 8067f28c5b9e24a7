package decision

import (
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	export := func(status string, expires time.Duration) *Answer {
		a := &Answer{Kind: KindExport, Export: Export{Status: status}}
		if expires != 0 {
			a.Export.ExpiresAt = now.Add(expires)
		}
		return a
	}
	for _, tc := range []struct {
		name string
		a    *Answer
		want *Verdict
	}{
		{"upstream 401/403", &Answer{Kind: KindUnauthorized}, BadKey},
		{"upstream 404", &Answer{Kind: KindNotFound}, Missing},
		{"upstream 429", &Answer{Kind: KindRateLimited, RetryAfter: "3"}, TooManyRequests},
		{"pending", export("pending", 0), NotYetCompleted},
		{"processing", export("processing", 0), NotYetCompleted},
		{"failed", export("failed", 0), ExportFailed},
		{"expired", export("expired", 0), LinkExpired},
		{"expired with future expires_at", export("expired", time.Hour), LinkExpired},
		{"completed, no expiry", export("completed", 0), Found},
		{"completed, future expiry", export("completed", time.Hour), Found},
		{"completed, exactly 1s left", export("completed", time.Second), Found},
		{"completed, under 1s left", export("completed", 999*time.Millisecond), LinkExpired},
		{"completed, expires now", &Answer{Kind: KindExport, Export: Export{Status: "completed", ExpiresAt: now}}, LinkExpired},
		{"completed, past expiry", export("completed", -time.Hour), LinkExpired},
		{"unknown status", export("archived", 0), NotYetCompleted},
		{"status is case-sensitive", export("Completed", 0), NotYetCompleted},
		{"status with spaces", export(" completed", 0), NotYetCompleted},
		{"empty status", export("", 0), NotYetCompleted},
	} {
		if got := Decide(tc.a, now); got != tc.want {
			t.Errorf("%s: Decide = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestVerdictsMatchSpec(t *testing.T) {
	for _, v := range Verdicts() {
		if v.Outcome == Redirect {
			if v.Status != 302 || v.Code != "" {
				t.Errorf("redirect verdict %+v", v)
			}
			continue
		}
		if v.Status < 400 || v.Code == "" || v.Message == "" {
			t.Errorf("error verdict incomplete: %+v", v)
		}
	}
	if BadKey.Status != 401 || Missing.Status != 404 || LinkExpired.Status != 410 || Down.Status != 503 || Internal.Status != 500 || TooManyRequests.Status != 429 || BadID.Status != 400 {
		t.Error("a verdict's status differs from the README's decision table")
	}
	seen := map[string]bool{}
	for _, o := range Outcomes() {
		if seen[o.String()] || o.String() == "unknown" {
			t.Errorf("outcome label %q duplicated or unknown", o)
		}
		seen[o.String()] = true
	}
	if len(seen) != 10 {
		t.Errorf("want the 10 outcome labels of the README's metrics, got %d", len(seen))
	}
}

func TestFreshFor(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	ttls := DefaultTTLs()
	for _, tc := range []struct {
		name string
		a    *Answer
		want time.Duration
	}{
		{"completed", &Answer{Kind: KindExport, Export: Export{Status: "completed"}}, 5 * time.Minute},
		{"completed expiring sooner keeps its TTL (turns into 410 in place)", &Answer{Kind: KindExport, Export: Export{Status: "completed", ExpiresAt: now.Add(time.Minute)}}, 5 * time.Minute},
		{"pending", &Answer{Kind: KindExport, Export: Export{Status: "pending"}}, time.Second},
		{"processing", &Answer{Kind: KindExport, Export: Export{Status: "processing"}}, time.Second},
		{"unknown status uses processing", &Answer{Kind: KindExport, Export: Export{Status: "queued"}}, time.Second},
		{"failed", &Answer{Kind: KindExport, Export: Export{Status: "failed"}}, 30 * time.Second},
		{"expired", &Answer{Kind: KindExport, Export: Export{Status: "expired"}}, 5 * time.Minute},
		{"not found", &Answer{Kind: KindNotFound}, 5 * time.Second},
		{"unauthorized", &Answer{Kind: KindUnauthorized}, 5 * time.Second},
		{"429 never", &Answer{Kind: KindRateLimited}, 0},
	} {
		if got := ttls.FreshFor(tc.a, now); got != tc.want {
			t.Errorf("%s: FreshFor = %v, want %v", tc.name, got, tc.want)
		}
	}

	noExpired := DefaultTTLs()
	noExpired[ExpiredClass] = 0
	a := &Answer{Kind: KindExport, Export: Export{Status: "completed", ExpiresAt: now.Add(time.Minute)}}
	if got := noExpired.FreshFor(a, now); got != time.Minute {
		t.Errorf("with expired TTL 0, a completed entry must end at expires_at: got %v", got)
	}
	a.Export.ExpiresAt = now.Add(-time.Minute)
	if got := noExpired.FreshFor(a, now); got != 0 {
		t.Errorf("past expiry with expired TTL 0: got %v, want 0", got)
	}
}

func TestParseClass(t *testing.T) {
	for _, name := range []string{"completed", "pending", "processing", "failed", "expired", "not_found", "unauthorized"} {
		c, err := ParseClass(name)
		if err != nil || c.String() != name {
			t.Errorf("ParseClass(%q) = %v, %v", name, c, err)
		}
	}
	if _, err := ParseClass("redirect"); err == nil {
		t.Error("ParseClass accepted an unknown name")
	}
}
