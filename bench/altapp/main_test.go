package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

func testApp(t *testing.T) *httptest.Server {
	t.Helper()
	a := newApp(config{
		apiKey:          "hb_test_bench",
		exportID:        "01935abc-def0-7123-4567-890abcdef012",
		projectID:       "proj_bench",
		bucket:          "bench-exports",
		objectKey:       "exports/{export.project_id}/{id}.csv",
		region:          "us-east-1",
		endpoint:        "http://localhost:7070",
		pathStyle:       true,
		accessKeyID:     "AKIABENCHEXAMPLE0001",
		secretAccessKey: "secret",
		presignExpiry:   15 * time.Minute,
		filename:        "export-{id}.csv",
		contentType:     "text/csv",
	})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/exports/{id}", a.getExport)
	mux.HandleFunc("GET /v1/exports/{id}/download", a.downloadExport)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestAltapp(t *testing.T) {
	srv := testApp(t)
	const id = "01935abc-def0-7123-4567-890abcdef012"
	tests := []struct {
		name, path, auth string
		status           int
		code             string // error.code, when an error
	}{
		{"metadata", "/v1/exports/" + id, "Bearer hb_test_bench", 200, ""},
		{"metadata scheme any case", "/v1/exports/" + id, "bearer hb_test_bench", 200, ""},
		{"metadata no key", "/v1/exports/" + id, "", 401, "UNAUTHORIZED"},
		{"metadata wrong key", "/v1/exports/" + id, "Bearer hb_test_other", 401, "UNAUTHORIZED"},
		{"metadata unknown", "/v1/exports/01935abc-def0-7123-4567-890abcdef013", "Bearer hb_test_bench", 404, "NOT_FOUND"},
		{"download", "/v1/exports/" + id + "/download", "Bearer hb_test_bench", 302, ""},
		{"download upper case id", "/v1/exports/01935ABC-DEF0-7123-4567-890ABCDEF012/download", "Bearer hb_test_bench", 302, ""},
		{"download no key", "/v1/exports/" + id + "/download", "", 401, "UNAUTHORIZED"},
		{"download bad id", "/v1/exports/nope/download", "Bearer hb_test_bench", 400, "INVALID_REQUEST"},
		{"download unknown", "/v1/exports/01935abc-def0-7123-4567-890abcdef013/download", "Bearer hb_test_bench", 404, "NOT_FOUND"},
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", srv.URL+tt.path, nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if resp.Header.Get("X-Request-Id") == "" {
				t.Error("no X-Request-Id")
			}
			var body struct {
				Data  export `json:"data"`
				Error struct {
					Code string `json:"code"`
				} `json:"error"`
				Meta struct {
					RequestID string `json:"request_id"`
				} `json:"meta"`
			}
			switch {
			case tt.status == 302:
				checkRedirect(t, resp)
			case json.NewDecoder(resp.Body).Decode(&body) != nil:
				t.Fatal("body is not JSON")
			case body.Error.Code != tt.code:
				t.Errorf("error.code %q, want %q", body.Error.Code, tt.code)
			case tt.status == 200 && (body.Data.ID != id || body.Data.Status != "completed" || body.Data.ProjectID != "proj_bench"):
				t.Errorf("data %+v", body.Data)
			case body.Meta.RequestID != resp.Header.Get("X-Request-Id"):
				t.Errorf("meta.request_id %q, header %q", body.Meta.RequestID, resp.Header.Get("X-Request-Id"))
			}
		})
	}
}

func checkRedirect(t *testing.T, resp *http.Response) {
	t.Helper()
	for k, want := range map[string]string{
		"Cache-Control":   "private, no-store",
		"Referrer-Policy": "no-referrer",
		"Content-Length":  "0",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	const id = "01935abc-def0-7123-4567-890abcdef012"
	for k, want := range map[string]string{
		"X-Amz-SignedHeaders":          "host",
		"X-Amz-Expires":                "900",
		"response-content-type":        "text/csv",
		"response-content-disposition": `attachment; filename="export-` + id + `.csv"; filename*=UTF-8''export-` + id + `.csv`,
	} {
		if got := q.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if want := "http://localhost:7070/bench-exports/exports/proj_bench/" + id + ".csv"; loc.Scheme+"://"+loc.Host+loc.Path != want {
		t.Errorf("URL %q, want %q", loc.Scheme+"://"+loc.Host+loc.Path, want)
	}
}

func TestContentDisposition(t *testing.T) {
	tests := map[string]string{
		"export-1.csv": `attachment; filename="export-1.csv"; filename*=UTF-8''export-1.csv`,
		`a "b" ü.csv`:  `attachment; filename="a _b_ _.csv"; filename*=UTF-8''a%20%22b%22%20%C3%BC.csv`,
	}
	for in, want := range tests {
		if got := contentDisposition(in); got != want {
			t.Errorf("contentDisposition(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestMixCatalog: the realistic mix's exports exist for their owner key
// only, and a pending one completes when told to.
func TestMixCatalog(t *testing.T) {
	a := newApp(config{apiKey: "hb_test_bench", exportID: "01935abc-def0-7123-4567-890abcdef012",
		mixKeys: 8})
	const done = "b3000000-0001-4000-8000-00000000000b" // index 11: key 3
	const pending = "b3000000-0001-4000-8001-000000000005"
	exp, key, ok := a.find(done)
	if !ok || key != "hb_test_mix_3" || exp.Status != "completed" || exp.ProjectID != "proj_mix_3" || exp.ExpiresAt.IsZero() {
		t.Fatalf("find(%s) = %+v, %q, %v", done, exp, key, ok)
	}
	for _, id := range []string{"b3000000-0001-4000-8002-000000000001", "b3000000-0001-5000-8000-000000000001", "b3000001-0001-4000-8000-000000000001"} {
		if _, _, ok := a.find(id); ok {
			t.Errorf("find(%s) found an export", id)
		}
	}
	if exp, _, _ := a.find(pending); exp.Status != "pending" {
		t.Fatalf("first ask: %s", exp.Status)
	}
	if exp, _, _ := a.find(pending); exp.Status != "pending" {
		t.Fatalf("second ask: %s", exp.Status)
	}
	// Over HTTP: the owner's key gets the export, another key 401.
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/exports/{id}", a.getExport)
	mux.HandleFunc("POST /debug/complete/{id}", a.complete)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/debug/complete/"+pending, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if exp, _, _ := a.find(pending); exp.Status != "completed" || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("after completing it: %s (status %d)", exp.Status, resp.StatusCode)
	}
	for key, want := range map[string]int{"hb_test_mix_3": 200, "hb_test_mix_4": 401, "hb_test_bench": 401} {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/exports/"+done, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: status %d, want %d", key, resp.StatusCode, want)
		}
	}
}
