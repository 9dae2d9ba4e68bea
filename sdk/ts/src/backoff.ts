/**
 * Backoff is the reconnect schedule: exponential backoff with full jitter. The wait
 * before reconnect attempt n (0 for the first attempt after a loss) is uniform in
 * [0, min(max, min·2ⁿ)], but never shorter than floor, so that a client never spins.
 * All values are milliseconds.
 */
export interface Backoff {
  /** Ceiling of the first wait. Default 500. */
  min: number;
  /** Cap of the ceiling. Default 20000. */
  max: number;
  /** Shortest wait. Default 10, or min when that is smaller. */
  floor: number;
}

/** Default reconnect schedule, the same as the Go SDK's. */
export const defaultBackoff: Readonly<Backoff> = { min: 500, max: 20_000, floor: 10 };

/** Fills defaults and validates a partial schedule. */
export function makeBackoff(b: Partial<Backoff> = {}): Backoff {
  const min = b.min ?? defaultBackoff.min;
  const max = b.max ?? Math.max(defaultBackoff.max, min);
  const floor = b.floor ?? Math.min(defaultBackoff.floor, min);
  if (!(min > 0) || !(max >= min)) throw new RangeError("roomcast: backoff needs 0 < min <= max");
  if (!(floor >= 0) || floor > min) throw new RangeError("roomcast: backoff floor must be within [0, min]");
  return { min, max, floor };
}

/** Returns min(max, min·2^attempt), the upper bound of the wait before attempt. */
export function backoffCeiling(b: Backoff, attempt: number): number {
  const a = Math.max(0, Math.floor(attempt));
  return a >= 60 ? b.max : Math.min(b.max, b.min * 2 ** a);
}

/** Returns the wait before attempt given r, a uniform random number in [0, 1). */
export function backoffDelay(b: Backoff, attempt: number, r: number): number {
  return Math.max(b.floor, r * backoffCeiling(b, attempt));
}
