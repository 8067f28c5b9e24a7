// Command altapp is the application side of the benchmark in bench/run.sh.
//
// It plays two roles on one loopback listener:
//
//   - GET /v1/exports/{id}: the application's metadata API (the public "Get
//     export" endpoint) that the export_download handler asks on a cache miss;
//   - GET /v1/exports/{id}/download: "the usual alternative" of the targets (BENCHMARKS.md), an app
//     endpoint that checks the key against the same metadata and presigns a
//     fresh S3 URL on every request with aws-sdk-go-v2, so that Caddy's
//     reverse_proxy in front of it can be compared with the handler.
//
// The presigned URL uses the same bucket, key, region, endpoint, path style,
// credentials, response-content-disposition and response-content-type as the
// handler sites in bench/Caddyfile.tmpl, so both answers have the same shape.
// S3 itself is never contacted: presigning is local computation.
//
// Besides the one export of the four side-by-side scenarios, it holds the
// catalog of the realistic mix (bench/mixload): every id of the form
//
//	b3000000-RRRR-4000-800P-IIIIIIIIIIII
//
// (hex: R a round, P 0 for an export that is completed, 1 for one that is
// pending, I its index) is an export owned by the API key
// hb_test_mix_<I mod -mix-keys>. A pending one stays pending until
// POST /debug/complete/{id} (which bench/mixload sends at a fixed point of
// its stream), so that clients polling it see it complete during the run,
// at the same point of the stream whatever the speed of the site.
//
// GET /debug/counters reports how many requests each role has answered, which
// run.sh uses to show how often each scenario reaches the application.
//
// With -free-ports N it prints N free loopback TCP ports, one a line, and exits.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// config holds the command-line settings; the defaults match bench/run.sh.
type config struct {
	addr            string
	apiKey          string
	exportID        string
	projectID       string
	bucket          string
	objectKey       string // template: {id} and {export.project_id}
	region          string
	endpoint        string
	pathStyle       bool
	accessKeyID     string
	secretAccessKey string
	presignExpiry   time.Duration
	filename        string // template: {id}
	contentType     string
	mixKeys         int // API keys of the mix's catalog
}

// export is the part of the "Get export" resource that the benchmark needs.
type export struct {
	ID        string    `json:"id"`
	ProjectID string    `json:"project_id"`
	Status    string    `json:"status"`
	ExpiresAt time.Time `json:"expires_at"`
}

// app serves both roles from the same in-memory metadata.
type app struct {
	cfg       config
	exports   map[string]export
	presigner *s3.PresignClient

	completed sync.Map // mix ids of pending exports that have completed

	metadataRequests atomic.Int64
	downloadRequests atomic.Int64
	presigns         atomic.Int64
	notReady         atomic.Int64 // answers that an export is pending
}

func main() {
	var cfg config
	var freePorts int
	flag.StringVar(&cfg.addr, "addr", "127.0.0.1:8090", "listen address (keep it on loopback)")
	flag.StringVar(&cfg.apiKey, "api-key", "hb_test_bench", "the one API key that may see the export")
	flag.StringVar(&cfg.exportID, "export-id", "01935abc-def0-7123-4567-890abcdef012", "the one export that exists")
	flag.StringVar(&cfg.projectID, "project-id", "proj_bench", "project_id of the export")
	flag.StringVar(&cfg.bucket, "bucket", "bench-exports", "S3 bucket")
	flag.StringVar(&cfg.objectKey, "object-key", "exports/{export.project_id}/{id}.csv", "S3 object key template")
	flag.StringVar(&cfg.region, "region", "us-east-1", "S3 region")
	flag.StringVar(&cfg.endpoint, "endpoint", "http://localhost:7070", "S3-compatible endpoint (never contacted)")
	flag.BoolVar(&cfg.pathStyle, "path-style", true, "path-style S3 URLs")
	flag.StringVar(&cfg.accessKeyID, "access-key-id", "AKIABENCHEXAMPLE0001", "static access key id")
	flag.StringVar(&cfg.secretAccessKey, "secret-access-key", "bench/secret/key/not/used/for/anything/real", "static secret access key")
	flag.DurationVar(&cfg.presignExpiry, "presign-expiry", 15*time.Minute, "lifetime of a presigned URL")
	flag.StringVar(&cfg.filename, "filename", "export-{id}.csv", "download filename template")
	flag.StringVar(&cfg.contentType, "content-type", "text/csv", "response-content-type of the URL")
	flag.IntVar(&cfg.mixKeys, "mix-keys", 8, "API keys of the realistic mix's catalog")
	flag.IntVar(&freePorts, "free-ports", 0, "print this many free loopback ports and exit")
	flag.Parse()

	if freePorts > 0 {
		if err := printFreePorts(freePorts); err != nil {
			log.Fatal(err)
		}
		return
	}
	if err := run(cfg); err != nil {
		log.Fatal(err)
	}
}

func run(cfg config) error {
	a := newApp(cfg)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/exports/{id}", a.getExport)
	mux.HandleFunc("GET /v1/exports/{id}/download", a.downloadExport)
	mux.HandleFunc("GET /debug/counters", a.counters)
	mux.HandleFunc("POST /debug/complete/{id}", a.complete)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeAPIError(w, requestID(r), http.StatusNotFound, "NOT_FOUND", "Resource not found")
	})

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	log.Printf("altapp listening on %s (export %s)", ln.Addr(), cfg.exportID)
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func newApp(cfg config) *app {
	// One client for the life of the process, as a real app would hold it;
	// only the presign itself happens per request.
	client := s3.New(s3.Options{
		Region:       cfg.region,
		Credentials:  credentials.NewStaticCredentialsProvider(cfg.accessKeyID, cfg.secretAccessKey, ""),
		BaseEndpoint: aws.String(cfg.endpoint),
		UsePathStyle: cfg.pathStyle,
	})
	id := strings.ToLower(cfg.exportID)
	return &app{
		cfg: cfg,
		exports: map[string]export{
			id: {
				ID:        id,
				ProjectID: cfg.projectID,
				Status:    "completed",
				ExpiresAt: time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second),
			},
		},
		presigner: s3.NewPresignClient(client),
	}
}

// getExport is the metadata API: the "Get export" envelope for the key's export.
func (a *app) getExport(w http.ResponseWriter, r *http.Request) {
	a.metadataRequests.Add(1)
	reqID := requestID(r)
	exp, key, ok := a.find(strings.ToLower(r.PathValue("id")))
	if !authorized(r, key) {
		writeUnauthorized(w, reqID)
		return
	}
	if !ok {
		writeAPIError(w, reqID, http.StatusNotFound, "NOT_FOUND", "Export not found")
		return
	}
	if exp.Status != "completed" {
		a.notReady.Add(1)
	}
	body := struct {
		Data export            `json:"data"`
		Meta map[string]string `json:"meta"`
	}{exp, map[string]string{"request_id": reqID}}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Request-Id", reqID)
	_ = json.NewEncoder(w).Encode(body)
}

// downloadExport is the usual alternative: check the key, look the export up,
// presign per request, answer 302.
func (a *app) downloadExport(w http.ResponseWriter, r *http.Request) {
	a.downloadRequests.Add(1)
	reqID := requestID(r)
	id := strings.ToLower(r.PathValue("id"))
	exp, owner, ok := a.find(id)
	if !authorized(r, owner) {
		writeUnauthorized(w, reqID)
		return
	}
	if !isUUID(id) {
		writeAPIError(w, reqID, http.StatusBadRequest, "INVALID_REQUEST", "id must be a valid UUID")
		return
	}
	if !ok {
		writeAPIError(w, reqID, http.StatusNotFound, "NOT_FOUND", "Export not found")
		return
	}
	if exp.Status != "completed" {
		a.notReady.Add(1)
		writeAPIError(w, reqID, http.StatusBadRequest, "EXPORT_NOT_READY", "Export is not yet completed")
		return
	}
	lifetime := min(a.cfg.presignExpiry, time.Until(exp.ExpiresAt).Truncate(time.Second))
	if lifetime < time.Second {
		writeAPIError(w, reqID, http.StatusGone, "EXPORT_EXPIRED", "Export download link has expired")
		return
	}

	key := strings.NewReplacer("{id}", id, "{export.project_id}", exp.ProjectID).Replace(a.cfg.objectKey)
	filename := strings.ReplaceAll(a.cfg.filename, "{id}", id)
	presigned, err := a.presigner.PresignGetObject(r.Context(), &s3.GetObjectInput{
		Bucket:                     aws.String(a.cfg.bucket),
		Key:                        aws.String(key),
		ResponseContentDisposition: aws.String(contentDisposition(filename)),
		ResponseContentType:        aws.String(a.cfg.contentType),
	}, s3.WithPresignExpires(lifetime))
	if err != nil {
		log.Printf("presign: %v", err)
		writeAPIError(w, reqID, http.StatusInternalServerError, "INTERNAL_ERROR", "Internal error")
		return
	}
	a.presigns.Add(1)

	h := w.Header()
	h.Set("Location", presigned.URL)
	h.Set("Cache-Control", "private, no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Request-Id", reqID)
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusFound)
}

// counters reports how often each role was asked, for run.sh's summary.
func (a *app) counters(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]int64{
		"metadata_requests": a.metadataRequests.Load(),
		"download_requests": a.downloadRequests.Load(),
		"presigns":          a.presigns.Load(),
		"not_ready":         a.notReady.Load(),
	})
}

// complete marks a pending export of the mix as completed.
func (a *app) complete(w http.ResponseWriter, r *http.Request) {
	a.completed.Store(strings.ToLower(r.PathValue("id")), true)
	w.WriteHeader(http.StatusNoContent)
}

// mixPrefix starts the ids of the realistic mix's catalog.
const mixPrefix = "b3000000-"

// find returns the export with (lowercased) id and the API key that may see
// it; without the export, the key that may learn it does not exist.
func (a *app) find(id string) (export, string, bool) {
	if exp, ok := a.exports[id]; ok {
		return exp, a.cfg.apiKey, true
	}
	if !strings.HasPrefix(id, mixPrefix) || !isUUID(id) || id[14:18] != "4000" {
		return export{}, a.cfg.apiKey, false
	}
	index, err := strconv.ParseUint(id[24:], 16, 64)
	if err != nil || a.cfg.mixKeys < 1 {
		return export{}, a.cfg.apiKey, false
	}
	owner := index % uint64(a.cfg.mixKeys)
	exp := export{
		ID:        id,
		ProjectID: "proj_mix_" + strconv.FormatUint(owner, 10),
		Status:    "completed",
		ExpiresAt: a.exports[strings.ToLower(a.cfg.exportID)].ExpiresAt,
	}
	switch id[19:23] {
	case "8000":
	case "8001":
		if _, done := a.completed.Load(id); !done {
			exp.Status = "pending"
		}
	default:
		return export{}, a.cfg.apiKey, false
	}
	return exp, "hb_test_mix_" + strconv.FormatUint(owner, 10), true
}

// authorized reports whether the request carries "Bearer <key>"; the scheme
// is case-insensitive (RFC 9110 §11.1).
func authorized(r *http.Request, key string) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	return ok && strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(token) == key
}

func writeUnauthorized(w http.ResponseWriter, reqID string) {
	w.Header().Set("WWW-Authenticate", "Bearer")
	writeAPIError(w, reqID, http.StatusUnauthorized, "UNAUTHORIZED", "Invalid or missing API key")
}

// writeAPIError writes the error envelope of the public API.
func writeAPIError(w http.ResponseWriter, reqID string, status int, code, message string) {
	type apiError struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	body := struct {
		Error apiError          `json:"error"`
		Meta  map[string]string `json:"meta"`
	}{apiError{code, message}, map[string]string{"request_id": reqID}}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Request-Id", reqID)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// requestID keeps a well-formed incoming X-Request-Id, else makes "req_" plus
// 20 random alphanumerics, like the handler does.
func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); validRequestID(id) {
		return id
	}
	var b [20]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = alnum[int(b[i])%len(alnum)]
	}
	return "req_" + string(b[:])
}

func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// isUUID reports whether s is a UUID in canonical 8-4-4-4-12 hex form, any case.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}

// contentDisposition builds the header value of the docs/configuration.md "Responses": an "attachment" with
// an ASCII fallback filename and the RFC 5987 filename* parameter.
func contentDisposition(name string) string {
	var fallback strings.Builder
	for _, r := range name {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			fallback.WriteByte('_')
		} else {
			fallback.WriteRune(r)
		}
	}
	return `attachment; filename="` + fallback.String() + `"; filename*=UTF-8''` + rfc5987(name)
}

// rfc5987 percent-encodes every byte that is not an attr-char (RFC 5987 §3.2.1).
func rfc5987(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isAlnum(c) || strings.IndexByte("!#$&+-.^_`|~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// printFreePorts prints n distinct loopback ports that were free a moment ago.
func printFreePorts(n int) error {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	}
	return nil
}
