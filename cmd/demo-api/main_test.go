package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestSurrogateKeysAndRevocation checks what demo.sh shows: every "Get
// export" answer names the key's id, and a revoked key gets 401 while the
// owner's other key still gets its export.
func TestSurrogateKeysAndRevocation(t *testing.T) {
	a := &api{exports: demoExports(time.Now()), keys: demoKeys()}
	h := a.handler()
	do := func(method, path, key string) *httptest.ResponseRecorder {
		t.Helper()
		req := httptest.NewRequest(method, path, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	export := "/v1/exports/" + IDCompleted

	for _, tc := range []struct {
		key, path string
		status    int
		tags      string
	}{
		{KeyAlice, export, http.StatusOK, "key_alice proj_demo"},
		{KeyLeaked, export, http.StatusOK, "key_leaked proj_demo"},
		{KeyBob, export, http.StatusNotFound, "key_bob"},
		{KeyAlice, "/v1/exports/not-a-uuid", http.StatusBadRequest, "key_alice"},
		{"", export, http.StatusUnauthorized, ""},
		{"hb_test_unknown", export, http.StatusUnauthorized, ""},
	} {
		rec := do(http.MethodGet, tc.path, tc.key)
		if rec.Code != tc.status || rec.Header().Get("Surrogate-Key") != tc.tags {
			t.Errorf("GET %s with %q: %d, Surrogate-Key %q; want %d, %q", tc.path, tc.key, rec.Code, rec.Header().Get("Surrogate-Key"), tc.status, tc.tags)
		}
	}

	// Bob cannot revoke Alice's key; Alice can, once.
	if rec := do(http.MethodDelete, "/v1/api_keys/key_leaked", KeyBob); rec.Code != http.StatusNotFound {
		t.Errorf("bob revoking alice's key: %d, want 404", rec.Code)
	}
	if rec := do(http.MethodDelete, "/v1/api_keys/key_leaked", KeyAlice); rec.Code != http.StatusNoContent {
		t.Errorf("alice revoking key_leaked: %d, want 204", rec.Code)
	}
	if rec := do(http.MethodDelete, "/v1/api_keys/key_leaked", KeyAlice); rec.Code != http.StatusNotFound {
		t.Errorf("revoking key_leaked again: %d, want 404", rec.Code)
	}
	if rec := do(http.MethodGet, export, KeyLeaked); rec.Code != http.StatusUnauthorized {
		t.Errorf("the revoked key: %d, want 401", rec.Code)
	}
	if rec := do(http.MethodGet, export, KeyAlice); rec.Code != http.StatusOK {
		t.Errorf("alice's other key after the revocation: %d, want 200", rec.Code)
	}
}
