//go:build !race

package scale

// raceEnabled reports a race-detector build, which runs gossip several times slower.
const raceEnabled = false
