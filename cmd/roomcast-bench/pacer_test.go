package main

import (
	"context"
	"testing"
	"time"
)

// fakeClock advances only when told: by SleepUntil, or by a stalled send.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }
func (c *fakeClock) SleepUntil(_ context.Context, t time.Time) {
	if t.After(c.now) {
		c.now = t
	}
}

func TestRunPacedKeepsIntendedTimesWhenASendStalls(t *testing.T) {
	start := time.Unix(1000, 0)
	c := &fakeClock{now: start}
	s := schedule{start: start, rate: 100} // every 10ms
	type sent struct{ intended, at time.Time }
	var got []sent
	n, err := runPaced(context.Background(), c, s, 10, time.Time{}, func(i int64, intended time.Time) error {
		got = append(got, sent{intended, c.now})
		if i == 2 {
			c.now = c.now.Add(45 * time.Millisecond) // this send stalls
		}
		return nil
	})
	if err != nil || n != 10 {
		t.Fatalf("runPaced = %d, %v; want 10 sent", n, err)
	}
	for i, g := range got {
		want := start.Add(time.Duration(i) * 10 * time.Millisecond)
		if !g.intended.Equal(want) {
			t.Fatalf("message %d intended %v, want %v: a stall must not shift later intended times", i, g.intended.Sub(start), want.Sub(start))
		}
		if g.at.Before(g.intended) {
			t.Fatalf("message %d sent at %v, before its intended time %v", i, g.at.Sub(start), g.intended.Sub(start))
		}
	}
	// Messages 3..6 fell due during the stall: they go out at once, late, in order, and
	// their latency (measured from intended) includes the wait.
	for i := 3; i <= 6; i++ {
		if !got[i].at.Equal(start.Add(65 * time.Millisecond)) {
			t.Fatalf("message %d sent at %v, want right after the stall (65ms)", i, got[i].at.Sub(start))
		}
	}
	if !got[7].at.Equal(got[7].intended) {
		t.Fatalf("message 7 sent at %v, want back on schedule at %v", got[7].at.Sub(start), got[7].intended.Sub(start))
	}
}

func TestRunPacedStopsAtDeadline(t *testing.T) {
	start := time.Unix(1000, 0)
	c := &fakeClock{now: start}
	s := schedule{start: start, rate: 1000}
	n, err := runPaced(context.Background(), c, s, 1000, start.Add(100*time.Millisecond), func(i int64, _ time.Time) error {
		c.now = c.now.Add(2 * time.Millisecond) // a sender that cannot keep up
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n >= 1000 || n < 40 {
		t.Fatalf("sent %d; want the sends that fit before the deadline (about 50), the rest left unsent", n)
	}
}

func TestRunPacedHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	c := &fakeClock{now: time.Unix(0, 0)}
	n, err := runPaced(ctx, c, schedule{start: c.now, rate: 10}, 100, time.Time{}, func(i int64, _ time.Time) error {
		if i == 4 {
			cancel()
		}
		return nil
	})
	if err == nil || n != 5 {
		t.Fatalf("runPaced = %d, %v; want 5 sent and the context's error", n, err)
	}
}

func TestScheduleDue(t *testing.T) {
	start := time.Unix(0, 0)
	s := schedule{start: start, rate: 4}
	tests := []struct {
		at   time.Duration
		want int64
	}{{-time.Second, 0}, {0, 1}, {249 * time.Millisecond, 1}, {250 * time.Millisecond, 2}, {time.Second, 5}}
	for _, tt := range tests {
		if got := s.due(start.Add(tt.at)); got != tt.want {
			t.Errorf("due(%v) = %d, want %d", tt.at, got, tt.want)
		}
	}
}

func TestRealClockSleepsUntilTheTime(t *testing.T) {
	due := time.Now().Add(3 * time.Millisecond)
	realClock{}.SleepUntil(context.Background(), due)
	if now := time.Now(); now.Before(due) {
		t.Fatalf("woke %v early", due.Sub(now))
	}
	// A cancelled context ends the sleep (the test's timeout bounds a failure).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	realClock{}.SleepUntil(ctx, time.Now().Add(time.Hour))
}
