package presign

import (
	"errors"
	"fmt"
)

// MaxKeyLen is S3's longest object key, in bytes: no object has a longer
// one, so a URL for it is refused rather than sent (and cached).
const MaxKeyLen = 1024

// ErrUnsafeObject means Presign refused a bucket or key: one that a store
// could resolve to another object than it names, or longer than any S3
// key (docs/configuration.md, "Templates").
var ErrUnsafeObject = errors.New("unsafe S3 object")

// CheckObject returns an error wrapping ErrUnsafeObject when obj's bucket
// or key is not one plain path: a "." or ".." segment, an empty segment
// ("a//b", a trailing "/"), a control character (C0, DEL, C1), or a key
// over MaxKeyLen. Stores that map keys onto a file system resolve such
// paths (versitygw serves exports/../secret.csv as secret.csv, and a//b as
// a/b); browsers remove dot segments before they send a URL (RFC 3986,
// section 5.2.4), so it would not even work for them.
//
// A key may start with one "/", which S3 keeps as part of the key. A
// bucket is one segment: no "/" at all.
func CheckObject(obj Object) error {
	if obj.Bucket == "" || obj.Key == "" {
		return fmt.Errorf("%w: empty bucket or object key", ErrUnsafeObject)
	}
	if len(obj.Key) > MaxKeyLen {
		return fmt.Errorf("%w: the object key is %d bytes, over S3's limit of %d", ErrUnsafeObject, len(obj.Key), MaxKeyLen)
	}
	if why := pathProblem(obj.Bucket, false); why != "" {
		return fmt.Errorf("%w: bucket %.64q %s", ErrUnsafeObject, obj.Bucket, why)
	}
	key := obj.Key
	if len(key) > 0 && key[0] == '/' {
		key = key[1:]
	}
	if why := pathProblem(key, true); why != "" {
		return fmt.Errorf("%w: object key %.128q %s", ErrUnsafeObject, obj.Key, why)
	}
	return nil
}

// pathProblem says what is wrong with p as slash-separated segments (as
// one segment when !slashes), or "" when nothing is.
func pathProblem(p string, slashes bool) string {
	start := 0
	for i := 0; i <= len(p); i++ {
		if i < len(p) {
			c := p[i]
			switch {
			case c < 0x20 || c == 0x7f:
				return "holds a control character"
			case c == 0xc2 && i+1 < len(p) && p[i+1] >= 0x80 && p[i+1] <= 0x9f:
				return "holds a control character" // U+0080 to U+009F
			case c != '/':
				continue
			case !slashes:
				return `holds a "/"`
			}
		}
		switch p[start:i] {
		case "":
			return "has an empty segment"
		case ".", "..":
			return "has a dot segment"
		}
		start = i + 1
	}
	return ""
}
