package exportdownload

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// goldenDir holds the adapt tests: a Caddyfile, a line of ten dashes, then
// the JSON that `caddy adapt --pretty` must print for it (mholt/caddy-l4's
// and Caddy's own layout).
const goldenDir = "testdata/caddyfile_adapt"

// goldenSeparator splits a golden file's Caddyfile from its JSON.
const goldenSeparator = "----------"

// crlf normalises Windows checkouts, where git may turn \n into \r\n and
// the line-by-line diff of CompareAdapt would fail on every line.
var crlf = regexp.MustCompile(`\r?\n`)

// TestCaddyfileAdapt runs every golden file through the same caddyfile
// adapter as `caddy adapt`, with Caddy's standard modules registered (the
// caddytest import does that), so directive ordering against reverse_proxy,
// handle and respond is Caddy's real one.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	// A renamed directory or extension must not turn this test into one
	// that passes by checking nothing.
	if len(files) < 6 {
		t.Fatalf("found %d golden files in %s, want at least 6", len(files), goldenDir)
	}
	for _, file := range files {
		name := filepath.Base(file)
		t.Run(strings.TrimSuffix(name, ".caddyfiletest"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			parts := strings.Split(crlf.ReplaceAllString(string(data), "\n"), goldenSeparator)
			if len(parts) != 2 {
				t.Fatalf("%s: want one %q line between the Caddyfile and the JSON, found %d", name, goldenSeparator, len(parts)-1)
			}
			// The trailing newline matches what `caddy fmt` writes, so a
			// formatted golden Caddyfile adapts without a warning.
			input, want := strings.TrimSpace(parts[0])+"\n", strings.TrimSpace(parts[1])
			if !strings.HasPrefix(want, "{") {
				t.Fatalf("%s: the part after %q must be the expected JSON", name, goldenSeparator)
			}
			// CompareAdapt prints the diff on stdout and only returns false.
			if !caddytest.CompareAdapt(t, name, input, "caddyfile", want) {
				t.Errorf("%s: adapted JSON differs from the golden JSON (diff above: - golden, + got)", name)
			}
			// CompareAdapt only logs warnings. A golden file is an example
			// users copy, so it must adapt cleanly: formatted, no
			// deprecated syntax.
			_, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			for _, w := range warnings {
				t.Errorf("%s:%d: warning: %s", name, w.Line, w.Message)
			}
		})
	}
}

// TestCaddyfileInvalid adapts bad Caddyfiles through the caddyfile adapter,
// the path `caddy adapt` and `caddy validate` take. `caddy adapt` does not
// provision, so every mistake must surface while parsing, and the message
// must name the subdirective at fault.
func TestCaddyfileInvalid(t *testing.T) {
	// valid holds the required subdirectives, so each case shows that its
	// own line alone is the mistake.
	const valid = "upstream http://127.0.0.1:9080\nbucket exports\nobject_key {id}.csv\n"
	for _, tc := range []struct {
		name string
		// opener is the directive line up to its `{`; default
		// "export_download".
		opener string
		body   string
		want   []string // substrings of the error, in any order
	}{
		{name: "unknown subdirective", body: valid + "colour blue", want: []string{`unrecognized subdirective "colour"`}},
		{name: "cache subdirective at top level", body: valid + "ttl completed 5m", want: []string{`unrecognized subdirective "ttl"`}},
		{name: "unknown cache subdirective", body: valid + "cache {\nmax_age 5m\n}", want: []string{"cache:", `unrecognized subdirective "max_age"`}},

		{name: "missing upstream", body: "bucket exports\nobject_key {id}.csv", want: []string{"upstream is required"}},
		{name: "missing bucket", body: "upstream http://127.0.0.1:9080\nobject_key {id}.csv", want: []string{"bucket is required"}},
		{name: "missing object_key", body: "upstream http://127.0.0.1:9080\nbucket exports", want: []string{"object_key is required"}},
		{name: "empty block", body: "", want: []string{"upstream is required"}},

		{name: "duplicate upstream", body: valid + "upstream http://127.0.0.1:9081", want: []string{"upstream: duplicate subdirective"}},
		{name: "duplicate cache", body: valid + "cache off\ncache {\nmax_entries 5\n}", want: []string{"cache: duplicate subdirective"}},
		{name: "duplicate ttl outcome", body: valid + "cache {\nttl completed 5m\nttl completed 6m\n}", want: []string{"ttl: completed given twice"}},
		{name: "duplicate upstream_header", body: valid + "upstream_header X-A 1\nupstream_header X-A 2", want: []string{"upstream_header: X-A given twice"}},

		{name: "upstream without argument", body: "upstream\nbucket exports\nobject_key {id}.csv", want: []string{"upstream: want exactly one argument, got 0"}},
		{name: "upstream with two arguments", body: "upstream http://a:1 http://b:2\nbucket exports\nobject_key {id}.csv", want: []string{"upstream: want exactly one argument, got 2"}},
		{name: "upstream_header with one argument", body: valid + "upstream_header X-Edge-Client", want: []string{"upstream_header: want <name> <value>, got 1"}},
		{name: "upstream_header with three arguments", body: valid + "upstream_header X-Edge-Client a b", want: []string{"upstream_header: want <name> <value>, got 3"}},
		{name: "forward_header without argument", body: valid + "forward_header", want: []string{"forward_header: want at least one header name"}},
		{name: "key_prefixes without argument", body: valid + "key_prefixes", want: []string{"key_prefixes: want at least one prefix"}},
		{name: "ttl with one argument", body: valid + "cache {\nttl completed\n}", want: []string{"ttl: want <outcome> <duration>, got 1"}},
		{name: "path_style with argument", body: valid + "path_style true", want: []string{"path_style: takes no argument"}},
		{name: "region with two arguments", body: valid + "region eu-west-1 us-east-1", want: []string{"region: want exactly one argument, got 2"}},
		{name: "max_entries without argument", body: valid + "cache {\nmax_entries\n}", want: []string{"max_entries: want exactly one argument, got 0"}},

		{name: "bad upstream_timeout", body: valid + "upstream_timeout soon", want: []string{"upstream_timeout:"}},
		{name: "bad presign_expiry", body: valid + "presign_expiry 15", want: []string{"presign_expiry:"}},
		{name: "bad stale_if_error", body: valid + "cache {\nstale_if_error 10mins\n}", want: []string{"stale_if_error:"}},
		{name: "bad presign_reuse", body: valid + "cache {\npresign_reuse 5x\n}", want: []string{"presign_reuse:"}},
		{name: "bad ttl duration", body: valid + "cache {\nttl completed forever\n}", want: []string{"ttl: completed:"}},

		{name: "negative upstream_timeout", body: valid + "upstream_timeout -1s", want: []string{"upstream_timeout: must not be negative"}},
		{name: "negative presign_expiry", body: valid + "presign_expiry -15m", want: []string{"presign_expiry: must not be negative"}},
		{name: "negative stale_if_error", body: valid + "cache {\nstale_if_error -1m\n}", want: []string{"stale_if_error: must not be negative"}},
		{name: "negative presign_reuse", body: valid + "cache {\npresign_reuse -1m\n}", want: []string{"presign_reuse: must not be negative"}},
		{name: "negative ttl", body: valid + "cache {\nttl failed -5s\n}", want: []string{"ttl:", "failed", "must not be negative"}},

		{name: "unknown ttl outcome", body: valid + "cache {\nttl bogus 5s\n}", want: []string{"ttl:", `unknown outcome "bogus"`}},
		{name: "max_entries 0", body: valid + "cache {\nmax_entries 0\n}", want: []string{`max_entries: "0" is not a positive whole number`}},
		{name: "max_entries not a number", body: valid + "cache {\nmax_entries x\n}", want: []string{`max_entries: "x" is not a positive whole number`}},
		{name: "max_entries negative", body: valid + "cache {\nmax_entries -5\n}", want: []string{`max_entries: "-5" is not a positive whole number`}},
		{name: "on_upstream_error maybe", body: valid + "on_upstream_error maybe", want: []string{`on_upstream_error: "maybe" is not error or passthrough`}},

		{name: "path without {id}", body: valid + "path /v1/exports/download", want: []string{"path:", `"/v1/exports/download"`, "{id}"}},
		{name: "path with {id} twice", body: valid + "path /v1/{id}/{id}", want: []string{"path:", `"/v1/{id}/{id}"`, "{id}"}},
		{name: "path with {id} inside a segment", body: valid + "path /v1/exports/x{id}/download", want: []string{"path:", "whole path segment"}},
		{name: "relative upstream_path", body: valid + "upstream_path v1/exports/{id}", want: []string{"upstream_path:", "must start with /"}},
		{name: "invalidate_path without {id}", body: valid + "invalidate_path /v1/exports", want: []string{"invalidate_path:", "{id}"}},

		{name: "upstream ftp", body: "upstream ftp://x\nbucket exports\nobject_key {id}.csv", want: []string{"upstream:", `"ftp://x"`, "http:// or https://"}},
		{name: "upstream without scheme", body: "upstream 127.0.0.1:9080\nbucket exports\nobject_key {id}.csv", want: []string{"upstream:", "http:// or https://"}},
		{name: "upstream with query", body: "upstream http://127.0.0.1:9080/?v=1\nbucket exports\nobject_key {id}.csv", want: []string{"upstream:", "query"}},
		{name: "endpoint without scheme", body: valid + "endpoint s3.example.com", want: []string{"endpoint:", "http:// or https://"}},

		{name: "presign_expiry 8d", body: valid + "presign_expiry 8d", want: []string{"presign_expiry:", "7 days"}},
		{name: "presign_expiry 200h", body: valid + "presign_expiry 200h", want: []string{"presign_expiry:", "7 days"}},
		{name: "presign_expiry under a second", body: valid + "presign_expiry 500ms", want: []string{"presign_expiry:", "at least 1s"}},

		{name: "access_key_id without secret", body: valid + "access_key_id AKIDEXAMPLE", want: []string{"access_key_id", "secret_access_key"}},
		{name: "secret without access_key_id", body: valid + "secret_access_key {env.S3_SECRET}", want: []string{"access_key_id", "secret_access_key"}},
		{name: "session_token alone", body: valid + "session_token tok", want: []string{"session_token:"}},

		{name: "bad forward_header name", body: valid + `forward_header "X Project"`, want: []string{"forward_header:", `"X Project"`}},
		{name: "bad upstream_header name", body: valid + "upstream_header X-Edge:Client v", want: []string{"upstream_header:", `"X-Edge:Client"`}},

		{name: "cache off extra", body: valid + "cache off extra", want: []string{"cache:", "cache off"}},
		{name: "cache with another word", body: valid + "cache on", want: []string{"cache:", "cache off"}},
		{name: "cache off with a block", body: valid + "cache off {\nmax_entries 5\n}", want: []string{"cache off: takes no block"}},

		// A word between the directive name and its `{` is neither a
		// matcher nor allowed: `export_download foo {`.
		{name: "argument on the directive line", opener: "export_download foo", body: valid, want: []string{"export_download", "'foo'"}},
		// A block after a one-line subdirective must be blamed on that
		// subdirective, not reported as an unknown subdirective "{".
		{name: "block after a subdirective", body: valid + "region eu-west-1 {\nfoo\n}", want: []string{"region"}},
		{name: "block after a cache subdirective", body: valid + "cache {\nttl completed 5m {\nfoo\n}\n}", want: []string{"ttl"}},

		{name: "object_key with unknown placeholder", body: "upstream http://127.0.0.1:9080\nbucket exports\nobject_key {foo}", want: []string{"object_key:", "{foo}"}},
		{name: "filename with unknown placeholder", body: valid + "filename export-{exportid}.csv", want: []string{"filename:", "{exportid}"}},
		{name: "bucket with unclosed brace", body: "upstream http://127.0.0.1:9080\nbucket exports-{export.region\nobject_key {id}.csv", want: []string{"bucket:", "unclosed {"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opener := tc.opener
			if opener == "" {
				opener = "export_download"
			}
			input := ":8080 {\n" + opener + " {\n" + tc.body + "\n}\nreverse_proxy 127.0.0.1:9080\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
			if err == nil {
				t.Fatalf("adapted without error; want an error containing %q\nCaddyfile:\n%s", tc.want, input)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

// TestCaddyfileErrorLines: a mistake found once the block is read (a
// value's check, a template, a header rule, the cache and fleet blocks'
// checks) is reported at the line of the setting at fault, as the ones
// found while reading are, not at the block's closing brace.
func TestCaddyfileErrorLines(t *testing.T) {
	const valid = "upstream http://127.0.0.1:9080\nbucket exports\nobject_key {id}.csv\n" // lines 3 to 5
	for _, tc := range []struct {
		name, body string
		want       []string // each message and the line it must name
	}{
		{"top-level value", "upstream ftp://x\nbucket exports\nobject_key {id}.csv", []string{`upstream: "ftp://x"`, "at Caddyfile:3"}},
		{"two values, two lines", valid + "presign_expiry 8d\non_upstream_error maybe",
			[]string{"presign_expiry:", "at Caddyfile:6", "on_upstream_error:", "at Caddyfile:7"}},
		{"the given half of a key pair", valid + "region eu-west-1\nsecret_access_key s3cret", []string{"secret_access_key: access_key_id and secret_access_key go together, at Caddyfile:7"}},
		{"template placeholder", "upstream http://127.0.0.1:9080\nbucket exports\nregion eu-west-1\nobject_key exports/{foo}.csv", []string{"object_key:", "{foo}", "at Caddyfile:6"}},
		{"header rule", valid + "forward_header X-Tenant\nupstream_header Authorization x", []string{"upstream_header: Authorization", "at Caddyfile:7"}},
		{"header rule of a repeated subdirective", valid + "forward_header X-Tenant\nforward_header X-Forwarded-For", []string{"forward_header: X-Forwarded-For", "at Caddyfile:7"}},
		{"cache block value", valid + "cache {\nmax_entries 5\nttl completed 5m\nttl bogus 5s\n}", []string{`unknown outcome "bogus"`, "at Caddyfile:9"}},
		{"negative ttl", valid + "cache {\nttl failed -5s\n}", []string{"ttl: failed: must not be negative", "at Caddyfile:7"}},
		{"fleet block value", valid + "fleet {\nsecret " + fleetSecret + "\nredis 10.0.0.1:6379 localhost\n}", []string{`fleet: redis: "localhost" is not host:port`, "at Caddyfile:8"}},
		{"fleet secret too short", valid + "fleet {\nredis 10.0.0.1:6379\n\nsecret tooshort\n}", []string{"fleet: secret: must be at least 32 bytes", "at Caddyfile:9"}},
		{"fleet setting missing: the block's line", valid + "region eu-west-1\nfleet {\nredis 10.0.0.1:6379\n}", []string{"fleet: secret: required", "at Caddyfile:7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			input := ":8080 {\nexport_download {\n" + tc.body + "\n}\nreverse_proxy 127.0.0.1:9080\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
			if err == nil {
				t.Fatalf("adapted without error\nCaddyfile:\n%s", input)
			}
			msg := err.Error()
			for _, w := range tc.want {
				i := strings.Index(msg, w)
				if i < 0 {
					t.Fatalf("error %q\ndoes not contain %q (in this order)\nCaddyfile:\n%s", err, w, input)
				}
				msg = msg[i+len(w):]
			}
		})
	}
}

// TestCaddyfileDispenser calls UnmarshalCaddyfile the way the
// httpcaddyfile helper does, on a bare dispenser, to pin what it leaves in
// the Handler: parsed values and nothing provisioned.
func TestCaddyfileDispenser(t *testing.T) {
	t.Setenv("S3_SECRET", "expanded-too-early")
	d := caddyfile.NewTestDispenser(`export_download {
		upstream http://127.0.0.1:9080
		bucket exports
		object_key {id}.csv
		access_key_id AKIDEXAMPLE
		secret_access_key {env.S3_SECRET}
		forward_header X-Project-Id X-Team
		forward_header X-Other
		key_prefixes hb_live_
		key_prefixes hb_test_
		cache {
			ttl pending 0
			stale_if_error 0
		}
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		field     string
		got, want any
	}{
		// Placeholders expand at provision, so that the adapted JSON
		// never holds a secret.
		{"secret_access_key", h.SecretAccessKey, "{env.S3_SECRET}"},
		// Repeatable subdirectives accumulate, several names per line.
		{"forward_header", strings.Join(h.ForwardHeader, ","), "X-Project-Id,X-Team,X-Other"},
		{"key_prefixes", strings.Join(h.KeyPrefixes, ","), "hb_live_,hb_test_"},
		// An explicit 0 must stay distinguishable from "not set": 0 means
		// "do not cache this outcome" / "never serve stale".
		{"ttl pending set", func() bool { _, ok := h.Cache.TTL["pending"]; return ok }(), true},
		{"ttl pending", int64(h.Cache.TTL["pending"]), int64(0)},
		{"stale_if_error set", h.Cache.StaleIfError != nil, true},
		{"presign_reuse unset", h.Cache.PresignReuse == nil, true},
		// Defaults are Provision's job, not the parser's: a default baked
		// into the JSON would hide later changes of the default.
		{"path", h.Path, ""},
		{"region", h.Region, ""},
		{"max_entries", h.Cache.MaxEntries, 0},
		{"upstream client", h.upstream == nil, true},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
		}
	}
}

// FuzzUnmarshalCaddyfile: no Caddyfile text panics the parser, and what it
// accepts names the required subdirectives.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, s := range []string{
		"export_download {\n upstream http://127.0.0.1:9080\n bucket b\n object_key k/{id}.csv\n}",
		"export_download {\n upstream http://x\n bucket {env.B}\n object_key {export.project_id}/{id}\n cache {\n ttl pending 0\n max_entries 10\n }\n}",
		"export_download {\n cache off\n}",
		"export_download {\n upstream_header X-A \"a b\"\n forward_header X-T\n key_prefixes a b\n}",
		"export_download {\n ttl\n }\n}",
		"export_download x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		h := new(Handler)
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
			return
		}
		if h.Upstream == "" || h.Bucket == "" || h.ObjectKey == "" {
			t.Fatalf("accepted a config without upstream, bucket or object_key: %q", input)
		}
	})
}
