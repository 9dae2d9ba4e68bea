package mesh

// deque is a FIFO queue on a slice: push at the back, drop from the front, index from
// the front. Dropped slots are cleared at once (so their values can be collected) and
// the slice is compacted when more than half of it is dead, so push and dropFront are
// amortised O(1) and memory stays within twice the live length.
type deque[T any] struct {
	items []T
	start int
}

func (d *deque[T]) len() int { return len(d.items) - d.start }

// at returns the i-th live element, 0 being the oldest.
func (d *deque[T]) at(i int) T { return d.items[d.start+i] }

// ptr returns a pointer to the i-th live element for in-place updates.
func (d *deque[T]) ptr(i int) *T { return &d.items[d.start+i] }

func (d *deque[T]) push(v T) { d.items = append(d.items, v) }

// dropFront removes the n oldest elements.
func (d *deque[T]) dropFront(n int) {
	if n <= 0 {
		return
	}
	var zero T
	for i := d.start; i < d.start+n; i++ {
		d.items[i] = zero
	}
	d.start += n
	switch {
	case d.start == len(d.items):
		d.items, d.start = d.items[:0], 0
		if cap(d.items) > 64 {
			// Idle rooms and subscriptions give back a large buffer.
			d.items = nil
		}
	case d.start > len(d.items)/2:
		n := copy(d.items, d.items[d.start:])
		clear(d.items[n:])
		d.items, d.start = d.items[:n], 0
	}
}

// clear removes everything and returns how many elements there were.
func (d *deque[T]) clear() int {
	n := d.len()
	d.items, d.start = nil, 0
	return n
}
