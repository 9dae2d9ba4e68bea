/** A listener of an event carrying a value of type T. */
export type Listener<T> = (value: T) => void;

/**
 * Emitter is a tiny typed event emitter. Listeners run synchronously, in the order
 * they were added; a listener that throws is reported to onError and does not stop the
 * others (a faulty app handler must never break the connection's bookkeeping).
 */
export class Emitter<E extends object> {
  private ls: { [K in keyof E]?: Listener<E[K]>[] } = {};

  constructor(private readonly onError: (err: unknown) => void) {}

  /** Adds a listener and returns a function that removes it. */
  on<K extends keyof E>(event: K, fn: Listener<E[K]>): () => void {
    (this.ls[event] ??= []).push(fn);
    return () => this.off(event, fn);
  }

  /** Removes a listener. */
  off<K extends keyof E>(event: K, fn: Listener<E[K]>): void {
    const a = this.ls[event];
    if (a) this.ls[event] = a.filter((f) => f !== fn);
  }

  /** Reports whether event has listeners. */
  has<K extends keyof E>(event: K): boolean {
    return (this.ls[event]?.length ?? 0) > 0;
  }

  /** Calls every listener of event with value. */
  emit<K extends keyof E>(event: K, value: E[K]): void {
    for (const fn of this.ls[event] ?? []) {
      try {
        fn(value);
      } catch (err) {
        this.onError(err);
      }
    }
  }
}
