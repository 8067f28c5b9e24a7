package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/exportedge/caddy-export-download/internal/decision"
)

// referenceParse is the straightforward reading of the "Get export"
// envelope with encoding/json that parseExportFields replaced: the one-pass
// parser must accept, refuse and keep exactly what it does.
func referenceParse(body []byte, id string) (*decision.Answer, error) {
	var env struct {
		Data map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, fmt.Errorf("not JSON: %v", err)
	}
	if env.Data == nil {
		return nil, errors.New("no data object")
	}
	a := &decision.Answer{Kind: decision.KindExport, Fields: make(map[string]string, len(env.Data))}
	for name, raw := range env.Data {
		raw = bytes.TrimSpace(raw)
		switch {
		case len(raw) > 0 && raw[0] == '"':
			var s string
			if json.Unmarshal(raw, &s) == nil {
				a.Fields[name] = s
			}
		case len(raw) > 0 && (raw[0] == '-' || ('0' <= raw[0] && raw[0] <= '9')):
			var n json.Number
			if json.Unmarshal(raw, &n) == nil {
				a.Fields[name] = n.String()
			}
		}
	}
	raw, ok := env.Data["status"]
	if !ok || !bytes.HasPrefix(bytes.TrimSpace(raw), []byte(`"`)) {
		return nil, errors.New("data.status missing or not a string")
	}
	a.Export.Status = a.Fields["status"]
	if raw, ok := env.Data["expires_at"]; ok && !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		if !bytes.HasPrefix(bytes.TrimSpace(raw), []byte(`"`)) {
			return nil, errors.New("data.expires_at is neither null nor a string")
		}
		t, ok := referenceExpiry(a.Fields["expires_at"])
		if !ok {
			return nil, errors.New("data.expires_at is not RFC 3339")
		}
		a.Export.ExpiresAt = t
	}
	if raw, ok := env.Data["id"]; ok {
		var got string
		if json.Unmarshal(raw, &got) != nil {
			return nil, errors.New("data.id is not a string")
		}
		if !strings.EqualFold(got, id) {
			return nil, errors.New("data.id names another export")
		}
	}
	return a, nil
}

// parseSeeds are bodies that reach every branch of the parser: escapes in
// names and values, repeated and differently cased "data" members, nulls
// that drop what came before, and values of every type.
var parseSeeds = []string{
	envelope(exportData("")),
	envelope(exportData(`,"expires_at":null,"format":"csv","n":-1.5e+3,"o":{"a":[1,{"b":"}"}]},"t":true`)),
	envelope(exportData(`,"expires_at":"2026-12-01T10:00:00+02:00"`)),
	`{"data":{"st\u0061tus":"compl\u0065ted","id":"` + testID + `"}}`,
	`{"data":{"status":"completed","na\"me":"a\\b\n\u00e9\ud800x","k":"caf` + "\xe9" + `"}}`,
	`{"DATA":{"status":"pending"},"data":{"x":"1"}}`,
	`{"Data":{"status":"pending","x":"1"},"dAtA":{"x":{"y":1}}}`,
	`{"data":{"status":"pending"},"data":null}`,
	`{"data":null,"data":{"status":"failed"}}`,
	`{"data":{"status":"a","status":"b","status":3}}`,
	`{"data":{"status":"a","expires_at":"x","expires_at":null}}`,
	`{"data":{"status":"a","id":{"x":1}}}`,
	`{"data":{"status":"a","id":42}}`,
	`{"data":{"status":"a","id":null}}`,
	`{"data":{"status":"a","id":true}}`,
	`{"data":{"status":"a","id":"` + testID + `","id":null}}`,
	`{"data":{"status":"a","id":null,"id":"` + strings.ToUpper(testID) + `"}}`,
	`{"data":{"status":"a","id":"other"}}`,
	`{"data":{"status":"a","expires_at":"2016-12-31t23:59:60z"}}`,
	`{"data":{"status":"a","expires_at":"2026-12-01T10:00:00,5+24:00"}}`,
	`{"data":"x","data":{"status":"a"}}`,
	`{"d\u0061ta":{"status":"a"}}`,
	` {"meta":[1,2,{"data":{}}] , "data" : { "status" : "completed" , "a" : [ ] } } ` + "\n",
	`{"data":{}}`, `{}`, `null`, `[]`, `"x"`, `1`, `true`, ``, `{"data":{"status":"a"}}x`,
	"{\"data\":{\"status\":\"\xff\"}}",
	`{"data":{"status":"archived","":"empty name","\u0000":"nul"}}`,
	// Where a tokenizer could draw the line elsewhere than encoding/json.
	"\xef\xbb\xbf" + `{"data":{"status":"a"}}`,
	`{"data":{"status":"a"}} {"data":{"status":"b"}}`,
	`{"data":{"status":"a"}}]`, `{"data":{"status":"a"},}`, `nullx`, " \t\r\n", `{"data":{"status":"a"}}` + " \t\r\n",
	`{"data":{"status":"a","x":1.}}`, `{"data":{"status":"a","x":-01}}`, `{"data":{"status":"a","x":1e}}`,
	`{"data":{"status":"a","x":"\x"}}`, `{"data":{"status":"a","x":"` + "\x01" + `"}}`,
	`{"data":{"status":"a","\ud800":"x","\udc00\ud800":"y","\ud83d\ude00":"z"}}`,
	"{\"d\xffata\":{\"status\":\"a\"},\"x\xe2\x82\":\"\xf0\x9f\x98\"}",
	`{"data":{"status":"a"},"data":[]}`, `{"data":{"status":"a"},"DATA":null}`,
}

func FuzzParseExportMatchesReference(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add([]byte(s), "status,format,na\"me")
	}
	f.Fuzz(func(t *testing.T, body []byte, keepList string) {
		checkAgainstReference(t, body, strings.Split(keepList, ","))
	})
}

func TestParseExportMatchesReference(t *testing.T) {
	for _, s := range parseSeeds {
		checkAgainstReference(t, []byte(s), []string{"x", "format"})
	}
	// encoding/json refuses nesting deeper than 10,000: so must the parse,
	// in data and outside it.
	for depth := 9999; depth <= 10001; depth++ {
		n := depth - 2 // inside the envelope and data
		for _, body := range []string{
			`{"data":{"status":"a","x":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}}`,
			`{"data":{"status":"a","x":` + strings.Repeat(`{"":`, n-1) + `{}` + strings.Repeat("}", n-1) + `}}`,
			`{"meta":` + strings.Repeat("[", n+1) + strings.Repeat("]", n+1) + `,"data":{"status":"a"}}`,
		} {
			checkAgainstReference(t, []byte(body), []string{"x"})
		}
	}
}

func checkAgainstReference(t *testing.T, body []byte, keep []string) {
	t.Helper()
	want, wantErr := referenceParse(body, testID)
	for _, keep := range [][]string{nil, keep} {
		got, err := parseExportFields(body, testID, keep)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("%q (keep %q): err = %v, reference err = %v", body, keep, err, wantErr)
		}
		if err != nil {
			if got != nil {
				t.Fatalf("%q: an answer with the error %v", body, err)
			}
			continue
		}
		wantFields := want.Fields
		if keep != nil {
			wantFields = maps.Clone(want.Fields)
			maps.DeleteFunc(wantFields, func(k, _ string) bool {
				for _, name := range keep {
					if k == name {
						return false
					}
				}
				return true
			})
		}
		if got.Kind != want.Kind || got.Export.Status != want.Export.Status ||
			!got.Export.ExpiresAt.Equal(want.Export.ExpiresAt) || got.Export.ExpiresAt.IsZero() != want.Export.ExpiresAt.IsZero() ||
			!maps.Equal(got.Fields, wantFields) {
			t.Fatalf("%q (keep %q):\n got %+v\nwant %+v (fields %q)", body, keep, got, want, wantFields)
		}
	}
}

// TestDataIDMustNameTheExport: a data.id, when present, is a string naming
// the requested export in any case (docs/configuration.md "The upstream contract");
// anything else is an upstream failure, so that an answer about another
// export, or one that cannot say which, never sends the caller anywhere.
func TestDataIDMustNameTheExport(t *testing.T) {
	for _, tc := range []struct {
		id   string // the member's JSON value; "" leaves it out
		want string // the error, "" when usable
	}{
		{"", ""},
		{`"` + testID + `"`, ""},
		{`"` + strings.ToUpper(testID) + `"`, ""},
		{`"\u0033` + testID[1:] + `"`, ""}, // an escape is read, not compared raw
		{`"00000000-0000-4000-8000-000000000000"`, "data.id names another export"},
		{`"` + testID + ` "`, "data.id names another export"},
		{`""`, "data.id names another export"},
		{`null`, "data.id is not a string"},
		{`{}`, "data.id is not a string"},
		{`{"id":"` + testID + `"}`, "data.id is not a string"},
		{`true`, "data.id is not a string"},
		{`false`, "data.id is not a string"},
		{`42`, "data.id is not a string"},
		{`[]`, "data.id is not a string"},
		{`["` + testID + `"]`, "data.id is not a string"},
	} {
		body := `{"data":{"status":"completed"}}`
		if tc.id != "" {
			body = `{"data":{"status":"completed","id":` + tc.id + `}}`
		}
		a, err := parseExport([]byte(body), testID)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("data.id %s: refused: %v", tc.id, err)
		case tc.want != "" && err == nil:
			t.Errorf("data.id %s: accepted (%+v), want %q", tc.id, a.Export, tc.want)
		case tc.want != "" && err.Error() != tc.want:
			t.Errorf("data.id %s: %v, want %q", tc.id, err, tc.want)
		}
	}
}
