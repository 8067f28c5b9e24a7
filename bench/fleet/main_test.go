package main

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	s := summarize(d)
	for _, c := range []struct {
		name      string
		got, want time.Duration
	}{
		{"p50", s.p50, 50 * time.Millisecond},
		{"p90", s.p90, 90 * time.Millisecond},
		{"p99", s.p99, 99 * time.Millisecond},
		{"max", s.max, 100 * time.Millisecond},
		{"mean", s.mean, 50500 * time.Microsecond},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if got := summarize([]time.Duration{3, 1, 2}).p50; got != 2 {
		t.Errorf("p50 of 3 unsorted values = %v, want 2", got)
	}
	if got := summarize(nil); got != (summary{}) {
		t.Errorf("summary of nothing = %+v", got)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{0.9}, 0.9},
	} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestMsgOf(t *testing.T) {
	line := `{"level":"debug","ts":1796104044.97,"logger":"http.handlers.export_download","msg":"fleet invalidation applied","export_ids":["x"],"entries":1}`
	if got := msgOf([]byte(line)); got != "fleet invalidation applied" {
		t.Errorf("msgOf = %q", got)
	}
	if got := msgOf([]byte(`{"msg":"a \"quoted\" word"}`)); got != `a \"quoted\" word` {
		t.Errorf("msgOf with escaped quotes = %q", got)
	}
	if got := msgOf([]byte("not json")); got != "" {
		t.Errorf("msgOf(not json) = %q", got)
	}
}

// TestLogTap: lines split across writes reach onLine whole, in order.
func TestLogTap(t *testing.T) {
	var got []string
	tap := &logTap{onLine: func(l []byte) { got = append(got, string(l)) }}
	for _, w := range []string{"one\ntw", "o\n", "three", "\nfour\n"} {
		if n, err := tap.Write([]byte(w)); n != len(w) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", w, n, err)
		}
	}
	if strings.Join(got, "|") != "one|two|three|four" {
		t.Errorf("lines %q", got)
	}
}

func TestCPUTicks(t *testing.T) {
	// /proc is Linux's; elsewhere the driver reports no CPU (-1).
	if got := cpuTicks(os.Getpid()); (got >= 0) != (runtime.GOOS == "linux") {
		t.Errorf("cpuTicks(self) = %d on %s", got, runtime.GOOS)
	}
	if got := cpuTicks(-1); got != -1 {
		t.Errorf("cpuTicks(-1) = %d, want -1", got)
	}
}
