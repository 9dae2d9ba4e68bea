import { ErrorCode } from "./gen/roomcast/v1/common_pb.js";

/**
 * RoomcastError is a command failure reported by the server. Compare `code` with
 * {@link ErrorCode}; `message` is for logs only, never parse it.
 */
export class RoomcastError extends Error {
  override name = "RoomcastError";
  /** Classifies the failure. */
  readonly code: ErrorCode;
  /** True when retrying the same command later may succeed. */
  readonly temporary: boolean;
  /** The server's detail. */
  readonly detail: string;

  constructor(code: ErrorCode, detail: string, temporary = false) {
    const name = (ErrorCode[code] ?? String(code)).replace(/^ERROR_CODE_/, "").toLowerCase();
    super(detail ? `roomcast: ${name}: ${detail}` : `roomcast: ${name}`);
    this.code = code;
    this.detail = detail;
    this.temporary = temporary;
  }
}

/**
 * CloseError reports that the server closed the connection, with the WebSocket close
 * code (see CloseCode) and whether the client reconnects after it.
 */
export class CloseError extends Error {
  override name = "CloseError";
  /** The WebSocket close code. */
  readonly code: number;
  /** The server's reason, when it gave one. */
  readonly reason: string;
  /** Whether the client reconnects after this close. */
  readonly reconnect: boolean;

  constructor(code: number, reason: string, reconnect: boolean) {
    super(`roomcast: server closed the connection: ${code}${reason ? ": " + reason : ""}`);
    this.code = code;
    this.reason = reason;
    this.reconnect = reconnect;
  }
}

/** ClosedError is the error of every call once the client is closed. `cause` says why. */
export class ClosedError extends Error {
  override name = "ClosedError";
  constructor(cause?: unknown) {
    super(cause instanceof Error ? `roomcast: client closed: ${cause.message}` : "roomcast: client closed", { cause });
  }
}

/** QueueFullError fails a command issued while offline when the offline queue is full. */
export class QueueFullError extends Error {
  override name = "QueueFullError";
  constructor() {
    super("roomcast: offline queue full");
  }
}

/**
 * ConnectionLostError fails a command that was sent but not answered before the
 * connection broke: the server may or may not have applied it. Retry publishes with an
 * idempotency key.
 */
export class ConnectionLostError extends Error {
  override name = "ConnectionLostError";
  constructor(cause?: unknown) {
    super("roomcast: connection lost before the reply", { cause });
  }
}

/** TimeoutError fails a command that got no result within its timeout. */
export class TimeoutError extends Error {
  override name = "TimeoutError";
  constructor(ms: number) {
    super(`roomcast: command timed out after ${ms} ms`);
  }
}

/** NotSubscribedError is returned by a Subscription's methods after it ended. */
export class NotSubscribedError extends Error {
  override name = "NotSubscribedError";
  constructor() {
    super("roomcast: subscription ended");
  }
}

/** LeftError ends a Subscription the server removed from its room. */
export class LeftError extends Error {
  override name = "LeftError";
  /** The room left. */
  readonly room: string;
  /** The server's reason, e.g. "backend". */
  readonly reason: string;
  constructor(room: string, reason: string) {
    super(`roomcast: removed from ${room}: ${reason}`);
    this.room = room;
    this.reason = reason;
  }
}

/**
 * Reports whether a close code allows reconnecting: codes 4500-4999 mean "do not
 * reconnect" (unauthorized, banned...); every other code means reconnect.
 */
export function closeCodeReconnects(code: number): boolean {
  return code < 4500 || code > 4999;
}

/** Reports whether a close code asks to reconnect at once (4000: the node is draining). */
export function closeCodeImmediate(code: number): boolean {
  return code === 4000;
}
