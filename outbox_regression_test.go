package exportdownload

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// TestRegressionOwnQueuedDeleteNotUndoneByRedis: README, "Running a fleet":
// "The node that saw the DELETE drops its entries before the 2xx reaches
// the client". When Redis did not answer the DELETE's publish (a short
// partition, a failover, a timed-out script call; here the script calls
// are refused while plain reads still work), the event waits in the node's
// outbox and the export's generation in Redis is not bumped. The node's
// own next miss then reads the shared decision from before its own DELETE
// (of the unbumped generation) and redirects to the deleted export, until
// the outbox goes out. A node should not take a shared decision of an id
// that waits in its own outbox.
func TestRegressionOwnQueuedDeleteNotUndoneByRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil, withFleet(r.Addr), func(h *Handler) {
		h.Fleet.Timeout = caddy.Duration(50 * time.Millisecond)
	})
	waitUntil(t, "the fleet is up", h.shared.client.Up)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound,
		"export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored")

	// The app deletes the export; the DELETE passes through this node
	// while Redis is silent.
	up.Set(testID, testenv.Response{Status: 404, Body: `{"error":{"code":"NOT_FOUND","message":"Export not found"}}`})
	r.MustDo(t, "ACL", "SETUSER", "default", "-eval", "-evalsha")
	ok := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	serve(t, h, request{method: http.MethodDelete, path: "/v1/exports/" + testID, next: ok,
		header: map[string]string{"Authorization": "Bearer " + testKey}})
	if s := h.shared.client.Stats(); s.OutboxLen == 0 {
		t.Fatalf("the DELETE was published although Redis refused its scripts: %+v", s)
	}

	rec := download(t, h, testID, testKey)
	if rec.Code == http.StatusFound {
		t.Fatalf("after its own DELETE answered 204, this node redirects again: %q (outbox %d)",
			rec.Header().Get("Cache-Status"), h.shared.client.Stats().OutboxLen)
	}
}
