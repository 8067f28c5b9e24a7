package presign

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestCheckObject: which buckets and keys Presign signs. The refused ones
// could make a store that resolves paths serve another object (see
// TestUnsafeKeysAgainstS3 for what versitygw does with them).
func TestCheckObject(t *testing.T) {
	atLimit := "exports/" + strings.Repeat("x", MaxKeyLen-len("exports/"))
	for _, tc := range []struct {
		bucket, key string
		ok          bool
	}{
		{"exports", "exports/proj_1/a.csv", true},
		{"exports", "a", true},
		{"my.dotted.bucket", "exports/proj 1/Ünïcødé ~ (1).csv", true},
		{"exports", "/leading.csv", true},         // S3 keeps a leading slash in the key
		{"exports", "exports/a..b/...csv", true},  // dots inside a segment are plain text
		{"exports", "exports/.hidden/x.", true},   // as are leading and trailing dots
		{"exports", "exports/%2e%2e/x.csv", true}, // "%" is escaped to %25: no dot segment
		{"exports", "invalid \xff UTF-8", true},
		{"exports", "a\u2028b", true}, // a line separator is not a control character
		{"exports", atLimit, true},

		{"exports", "", false},
		{"exports", atLimit + "x", false}, // longer than any S3 key
		{"exports", "/", false},
		{"exports", "//x.csv", false},
		{"exports", "a//b", false},
		{"exports", "exports/", false},
		{"exports", ".", false},
		{"exports", "..", false},
		{"exports", "./x.csv", false},
		{"exports", "exports/../secret.csv", false},
		{"exports", "exports/p/../../secret.csv", false},
		{"exports", "exports/p/..", false},
		{"exports", "exports/./x.csv", false},
		{"exports", "/../x.csv", false},
		{"exports", "x\x00.csv", false},
		{"exports", "x\n.csv", false},
		{"exports", "x\t.csv", false},
		{"exports", "x\x7f.csv", false},
		{"exports", "x\u0085.csv", false}, // C1 (NEL)
		{"exports", "x\u009f.csv", false},

		{"", "k", false},
		{".", "k", false},
		{"..", "k", false},
		{"a/b", "k", false},
		{"/exports", "k", false},
		{"exports\n", "k", false},
	} {
		err := CheckObject(Object{Bucket: tc.bucket, Key: tc.key})
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrUnsafeObject)) {
			t.Errorf("CheckObject(%q, %.40q) = %v, want ok=%v", tc.bucket, tc.key, err, tc.ok)
		}
		if err != nil && len(err.Error()) > 300 {
			t.Errorf("the error quotes too much: %d bytes", len(err.Error()))
		}
	}
}

// TestPresignChecksTheObject: both ways of signing (the lean path, and the
// SDK's for what the lean path leaves to it) refuse an unsafe object
// before asking for credentials.
func TestPresignChecksTheObject(t *testing.T) {
	prov := &stuckCreds{release: make(chan struct{})} // a credential fetch would hang
	t.Cleanup(func() { close(prov.release) })
	lean := newTemp(t, prov, time.Minute)
	viaSDK, err := New(context.Background(), Config{Region: "not a region", Credentials: prov, Expiry: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if lean.endpoints.get(context.Background(), "exports").viaSDK || !viaSDK.endpoints.get(context.Background(), "exports").viaSDK {
		t.Fatal("the two presigners do not cover both ways of signing")
	}
	obj := Object{Bucket: "exports", Key: "exports/../secret.csv", Filename: "x.csv", ContentType: "text/csv"}
	for _, p := range []*Presigner{lean, viaSDK} {
		if _, err := p.Presign(context.Background(), obj, time.Now(), time.Time{}); !errors.Is(err, ErrUnsafeObject) {
			t.Errorf("err = %v, want ErrUnsafeObject", err)
		}
	}
	if n := prov.calls.Load(); n != 0 {
		t.Errorf("the provider was asked %d times for an object that is refused", n)
	}
}
