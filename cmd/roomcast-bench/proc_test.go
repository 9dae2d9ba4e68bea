package main

import (
	"os"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name string
		stat string
		want time.Duration
		ok   bool
	}{
		{"plain", "1234 (roomcast) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 12 0 100 1000000 2000 18446744073709551615",
			3250 * time.Millisecond, true},
		{"name with spaces and parens", "77 (my (odd) name) R 1 77 77 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 100 10 0",
			100 * time.Millisecond, true},
		{"truncated", "77 (x) R 1 2 3", 0, false},
		{"no name", "garbage", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.stat))
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("parseStatCPU = %v, %v; want %v (ok %v)", got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestParseStatusRSS(t *testing.T) {
	status := "Name:\troomcast\nVmPeak:\t  900000 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n"
	got, err := parseStatusRSS([]byte(status))
	if err != nil || got != 12345*1024 {
		t.Fatalf("parseStatusRSS = %d, %v; want %d", got, err, 12345*1024)
	}
	if _, err := parseStatusRSS([]byte("Name:\tkthreadd\n")); err == nil {
		t.Fatal("a status without VmRSS was accepted")
	}
}

func TestReadProcSelf(t *testing.T) {
	s, err := readProcs([]int{os.Getpid(), os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	one, err := readProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if one.RSS <= 0 || s.RSS < one.RSS {
		t.Fatalf("RSS: one %d, two summed %d; want positive and summed", one.RSS, s.RSS)
	}
	if _, err := readProc(1 << 30); err == nil {
		t.Fatal("a missing process was read")
	}
}
