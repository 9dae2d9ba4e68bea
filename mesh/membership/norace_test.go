//go:build !race

package membership

// raceEnabled reports a race-detector build, which runs gossip several times slower.
const raceEnabled = false
