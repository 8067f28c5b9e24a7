// Command demo-api is a small stand-in for the application behind Caddy in
// the demo (./demo.sh): it serves the public "Get export" endpoint that
// export_download asks, for a few fixed exports in every state, and
// everything else the app would serve, so that pass-through can be seen.
//
// Every "Get export" answer made with a known key, 200 and refusals alike,
// names the key's id in a Surrogate-Key header (with the project's id on a
// 200), as the README's "Revoke a key in one command" asks of an app:
//
//	Surrogate-Key: key_alice proj_demo
//
// A key's id is "key_" and the key's name without "hb_test_demo_"
// (hb_test_demo_alice is key_alice). DELETE /v1/api_keys/{key id} revokes a
// key of the caller's: the app forgets it and answers 401 to it from then
// on, and the edge keeps answering from its cache until the operator purges
// the tag (caddy export-download purge --surrogate-key key_leaked).
//
//	demo-api -listen 127.0.0.1:9080      serve the metadata API
//	demo-api -seed                       create the bucket and upload the CSVs
//	demo-api -csv <id>                   print the CSV that -seed uploads for id
//
// The seed mode reads the S3 endpoint and keys from flags, which default to
// the environment the demo's Caddyfile reads too: S3_ENDPOINT,
// S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3_BUCKET, S3_REGION.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// The demo exports. The ids look like UUIDv7 (version 7, RFC 9562 variant)
// and differ only in the last digits so that they are easy to tell apart;
// demo.sh and the README use them.
const (
	IDCompleted     = "01938f2a-5c10-7a3e-9b41-2c6d8e0f1a01"
	IDPending       = "01938f2a-5c10-7a3e-9b41-2c6d8e0f1a02"
	IDProcessing    = "01938f2a-5c10-7a3e-9b41-2c6d8e0f1a03"
	IDFailed        = "01938f2a-5c10-7a3e-9b41-2c6d8e0f1a04"
	IDExpired       = "01938f2a-5c10-7a3e-9b41-2c6d8e0f1a05"
	IDPastExpiresAt = "01938f2a-5c10-7a3e-9b41-2c6d8e0f1a06"
	// IDDisposable is a second completed export, for showing that a DELETE
	// passed through Caddy drops the cached answer.
	IDDisposable = "01938f2a-5c10-7a3e-9b41-2c6d8e0f1a07"
)

// The demo API keys. Alice owns every demo export and has two keys, so that
// revoking one (KeyLeaked) leaves her other one working; Bob owns none, so
// he gets 404 for each (the app does not reveal that an id exists).
const (
	KeyAlice  = "hb_test_demo_alice"
	KeyLeaked = "hb_test_demo_leaked"
	KeyBob    = "hb_test_demo_bob"
)

// apiKey is one row of the app's API keys table.
type apiKey struct {
	id    string // what the app tags answers with: keyID(raw)
	owner string
}

// demoKeys returns the keys by their raw value.
func demoKeys() map[string]apiKey {
	return map[string]apiKey{
		KeyAlice:  {id: keyID(KeyAlice), owner: "alice"},
		KeyLeaked: {id: keyID(KeyLeaked), owner: "alice"},
		KeyBob:    {id: keyID(KeyBob), owner: "bob"},
	}
}

// keyID is the short id of a demo key, derived from its name:
// hb_test_demo_alice is key_alice. A real app would use its keys table's id.
func keyID(raw string) string {
	return "key_" + strings.TrimPrefix(raw, "hb_test_demo_")
}

const projectID = "proj_demo"

// export is one row of the app's exports table.
type export struct {
	ID          string     `json:"id"`
	ProjectID   string     `json:"project_id"`
	Status      string     `json:"status"`
	Format      string     `json:"format"`
	RowCount    *int       `json:"row_count"`
	Error       string     `json:"error,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	CompletedAt *time.Time `json:"completed_at"`
	ExpiresAt   *time.Time `json:"expires_at"`

	owner string
}

// demoExports returns the fixed exports with times relative to now, so
// that the "completed" one is downloadable for a day after the API starts.
func demoExports(now time.Time) map[string]*export {
	now = now.UTC().Truncate(time.Second)
	at := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
	rows := func(n int) *int { return &n }
	list := []*export{
		{ID: IDCompleted, Status: "completed", RowCount: rows(3), CreatedAt: now.Add(-2 * time.Minute), CompletedAt: at(-time.Minute), ExpiresAt: at(24 * time.Hour)},
		{ID: IDPending, Status: "pending", CreatedAt: now},
		{ID: IDProcessing, Status: "processing", CreatedAt: now.Add(-10 * time.Second)},
		{ID: IDFailed, Status: "failed", Error: "source query timed out", CreatedAt: now.Add(-time.Hour)},
		{ID: IDExpired, Status: "expired", RowCount: rows(3), CreatedAt: now.Add(-49 * time.Hour), CompletedAt: at(-48 * time.Hour), ExpiresAt: at(-24 * time.Hour)},
		// The cleanup job has not flipped it to "expired" yet; the edge must
		// still refuse it because expires_at is past.
		{ID: IDPastExpiresAt, Status: "completed", RowCount: rows(3), CreatedAt: now.Add(-26 * time.Hour), CompletedAt: at(-25 * time.Hour), ExpiresAt: at(-time.Hour)},
		{ID: IDDisposable, Status: "completed", RowCount: rows(3), CreatedAt: now.Add(-5 * time.Minute), CompletedAt: at(-4 * time.Minute), ExpiresAt: at(24 * time.Hour)},
	}
	m := make(map[string]*export, len(list))
	for _, e := range list {
		e.ProjectID = projectID
		e.Format = "csv"
		e.owner = "alice"
		m[e.ID] = e
	}
	return m
}

// objectKey is where an export's file lives; it must match object_key in
// Caddyfile.example (exports/{export.project_id}/{id}.csv).
func objectKey(e *export) string {
	return "exports/" + e.ProjectID + "/" + e.ID + ".csv"
}

// csvFor returns the file of an export: a few made-up contacts, tagged with
// the export id so that a download can be checked against the right file.
func csvFor(id string) []byte {
	return []byte("contact_id,name,email,export_id\n" +
		"1,Ada Lovelace,ada@example.com," + id + "\n" +
		"2,Grace Hopper,grace@example.com," + id + "\n" +
		"3,Katherine Johnson,katherine@example.com," + id + "\n")
}

func main() {
	var (
		listen   = flag.String("listen", "127.0.0.1:9080", "address to serve the metadata API on")
		seed     = flag.Bool("seed", false, "create the bucket, upload the demo CSVs and exit")
		printCSV = flag.String("csv", "", "print the CSV that -seed uploads for this export id and exit")
		endpoint = flag.String("endpoint", envOr("S3_ENDPOINT", "http://localhost:7070"), "S3 endpoint for -seed")
		bucket   = flag.String("bucket", envOr("S3_BUCKET", "demo-exports"), "bucket for -seed")
		region   = flag.String("region", envOr("S3_REGION", "us-east-1"), "S3 region for -seed")
		// Keys come from the environment by default so that they do not
		// show in the process list.
		accessKey = flag.String("access-key", os.Getenv("S3_ACCESS_KEY_ID"), "S3 access key id for -seed (default $S3_ACCESS_KEY_ID)")
		secretKey = flag.String("secret-key", os.Getenv("S3_SECRET_ACCESS_KEY"), "S3 secret access key for -seed (default $S3_SECRET_ACCESS_KEY)")
	)
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("demo-api: ")

	switch {
	case *printCSV != "":
		if _, ok := demoExports(time.Now())[*printCSV]; !ok {
			log.Fatalf("unknown export id %q", *printCSV)
		}
		os.Stdout.Write(csvFor(*printCSV))
	case *seed:
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := seedBucket(ctx, *endpoint, *region, *bucket, *accessKey, *secretKey); err != nil {
			log.Fatalf("seed: %v", err)
		}
	default:
		if err := serve(*listen); err != nil {
			log.Fatal(err)
		}
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// seedBucket creates the bucket (if needed) and uploads the file of every
// completed demo export.
func seedBucket(ctx context.Context, endpoint, region, bucket, accessKey, secretKey string) error {
	if accessKey == "" || secretKey == "" {
		return errors.New("S3 keys missing: set S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY or pass -access-key/-secret-key")
	}
	client := s3.New(s3.Options{
		Region:       region,
		BaseEndpoint: aws.String(endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(accessKey, secretKey, ""),
	})
	_, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) {
		return fmt.Errorf("create bucket %q: %w", bucket, err)
	}

	exports := demoExports(time.Now())
	ids := make([]string, 0, len(exports))
	for id := range exports {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		e := exports[id]
		if e.Status != "completed" {
			continue
		}
		body := csvFor(id)
		_, err := client.PutObject(ctx, &s3.PutObjectInput{
			Bucket:        aws.String(bucket),
			Key:           aws.String(objectKey(e)),
			Body:          bytes.NewReader(body),
			ContentLength: aws.Int64(int64(len(body))),
			ContentType:   aws.String("text/csv"),
		})
		if err != nil {
			return fmt.Errorf("upload %s: %w", objectKey(e), err)
		}
		log.Printf("uploaded s3://%s/%s (%d bytes)", bucket, objectKey(e), len(body))
	}
	return nil
}

// api is the app's state: the exports, which DELETE really removes, so that
// the demo can show Caddy dropping its cached answer afterwards, and the
// API keys, which DELETE /v1/api_keys/{id} revokes.
type api struct {
	mu      sync.Mutex
	exports map[string]*export
	keys    map[string]apiKey // by raw value
}

func serve(addr string) error {
	a := &api{exports: demoExports(time.Now()), keys: demoKeys()}
	srv := &http.Server{
		Addr:              addr,
		Handler:           a.handler(),
		ReadHeaderTimeout: 5 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Printf("serving the metadata API on http://%s", addr)
	log.Printf("keys: %s (id %s, owns every export), %s (id %s, also Alice's), %s (id %s, owns none)",
		KeyAlice, keyID(KeyAlice), KeyLeaked, keyID(KeyLeaked), KeyBob, keyID(KeyBob))
	log.Printf(`"Get export" answers carry "Surrogate-Key: <key id> %s"; DELETE /v1/api_keys/<key id> revokes a key`, projectID)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdownCtx)
	}
}

// handler routes the app's API, logging every request.
func (a *api) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, r, http.StatusOK, map[string]any{"data": map[string]string{"status": "ok"}})
	})
	mux.HandleFunc("GET /v1/exports", a.withKey(a.listExports))
	mux.HandleFunc("GET /v1/exports/{id}", a.withKey(a.getExport))
	mux.HandleFunc("DELETE /v1/exports/{id}", a.withKey(a.deleteExport))
	mux.HandleFunc("DELETE /v1/api_keys/{id}", a.withKey(a.revokeKey))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, http.StatusNotFound, "NOT_FOUND", "Not found")
	})
	return logRequests(mux)
}

// withKey answers 401 unless the request bears a known (not revoked) demo
// key, and passes the key on.
func (a *api) withKey(next func(w http.ResponseWriter, r *http.Request, key apiKey)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		scheme, raw, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		a.mu.Lock()
		key, ok := a.keys[strings.TrimSpace(raw)]
		a.mu.Unlock()
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "Invalid or missing API key")
			return
		}
		next(w, r, key)
	}
}

var uuidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// lookup returns the export when id is valid and owned by owner, else writes
// the error (another owner's export is "not found", not "forbidden").
func (a *api) lookup(w http.ResponseWriter, r *http.Request, owner string) (export, bool) {
	id := r.PathValue("id")
	if !uuidPattern.MatchString(id) {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "id must be a valid UUID")
		return export{}, false
	}
	a.mu.Lock()
	e, ok := a.exports[strings.ToLower(id)]
	var cp export
	if ok {
		cp = *e
	}
	a.mu.Unlock()
	if !ok || cp.owner != owner {
		writeError(w, r, http.StatusNotFound, "NOT_FOUND", "Export not found")
		return export{}, false
	}
	return cp, true
}

// getExport is "Get export". Its answers name the key's id (and on a 200
// the project's) in Surrogate-Key, so that purging the key's tag drops
// every answer the edge cached for that key.
func (a *api) getExport(w http.ResponseWriter, r *http.Request, key apiKey) {
	w.Header().Set("Surrogate-Key", key.id)
	if e, ok := a.lookup(w, r, key.owner); ok {
		w.Header().Set("Surrogate-Key", key.id+" "+e.ProjectID)
		writeJSON(w, r, http.StatusOK, map[string]any{"data": e})
	}
}

// revokeKey revokes one of the caller's keys, by id: the app forgets the
// key, so it gets 401 from then on.
func (a *api) revokeKey(w http.ResponseWriter, r *http.Request, caller apiKey) {
	id := r.PathValue("id")
	a.mu.Lock()
	defer a.mu.Unlock()
	for raw, k := range a.keys {
		if k.id == id && k.owner == caller.owner {
			delete(a.keys, raw)
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	writeError(w, r, http.StatusNotFound, "NOT_FOUND", "API key not found")
}

func (a *api) deleteExport(w http.ResponseWriter, r *http.Request, key apiKey) {
	e, ok := a.lookup(w, r, key.owner)
	if !ok {
		return
	}
	a.mu.Lock()
	delete(a.exports, e.ID)
	a.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) listExports(w http.ResponseWriter, r *http.Request, key apiKey) {
	a.mu.Lock()
	list := []export{}
	for _, e := range a.exports {
		if e.owner == key.owner {
			list = append(list, *e)
		}
	}
	a.mu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	writeJSON(w, r, http.StatusOK, map[string]any{"data": list})
}

func writeError(w http.ResponseWriter, r *http.Request, status int, code, message string) {
	writeJSON(w, r, status, map[string]any{"error": map[string]string{"code": code, "message": message}})
}

// writeJSON writes body with the envelope's meta added.
func writeJSON(w http.ResponseWriter, r *http.Request, status int, body map[string]any) {
	body["meta"] = map[string]string{"request_id": requestID(r)}
	b, err := json.Marshal(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Request-Id", requestID(r))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

type requestIDKey struct{}

// newRequestID keeps the id Caddy forwards, so that one id follows a request
// through both logs; otherwise it makes one up.
func newRequestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); requestIDPattern.MatchString(id) {
		return id
	}
	// 26 base32 characters: alphanumeric, as the public API's ids are.
	return "req_" + rand.Text()
}

func requestID(r *http.Request) string {
	id, _ := r.Context().Value(requestIDKey{}).(string)
	return id
}

// statusRecorder remembers the status for the log line.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// logRequests gives each request its id and logs one line per request, so
// the demo can show that cache hits at the edge never reach the app
// (demo.sh counts these lines).
func logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := newRequestID(r)
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id))
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		log.Printf("%s %s -> %d request_id=%s", r.Method, r.URL.Path, rec.status, id)
	})
}
