import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  ClientCommandSchema,
  type ClientCommand,
  type ConnectResult,
  type Disconnect,
  JoinResultSchema,
  type JoinResult,
  type Limits,
  type ServerMessage,
} from "./gen/roomcast/v1/client_pb.js";
import { ErrorCode, type RoomMessage } from "./gen/roomcast/v1/common_pb.js";
import { backoffDelay, makeBackoff, type Backoff } from "./backoff.js";
import {
  SUBPROTOCOL_JSON,
  SUBPROTOCOL_PROTO,
  decodeServerMessage,
  encodeCommand,
  infoFromPB,
  memberFromPB,
  messageFromPB,
  payloadFromPB,
  payloadToPB,
  posFromPB,
  posToPB,
  type ClientInfo,
  type Data,
  type DirectMessage,
  type Member,
  type Message,
  type Position,
} from "./codec.js";
import { Emitter } from "./emitter.js";
import {
  CloseError,
  ClosedError,
  ConnectionLostError,
  LeftError,
  NotSubscribedError,
  QueueFullError,
  RoomcastError,
  TimeoutError,
  closeCodeImmediate,
  closeCodeReconnects,
} from "./errors.js";
import { Subscription, type JoinInfo, type JoinOptions } from "./subscription.js";

/** Client name sent in the connect command. */
export const CLIENT_NAME = "roomcast-ts/0.1";

/**
 * State of a Client:
 *
 *     disconnected → connecting → connected → disconnected → connecting → …
 *                                           ↘ closed (close(), or a "do not reconnect" code)
 */
export type State = "disconnected" | "connecting" | "connected" | "closed";

/** StateChange describes a transition of the client's state. */
export interface StateChange {
  /** The previous state. */
  from: State;
  /** The new state. */
  to: State;
  /** Why the client left "connected" or "connecting", when an error made it; a CloseError when the server closed. */
  error?: Error;
}

/** ConnInfo describes the current (or last) connection. */
export interface ConnInfo {
  /** The connection id. */
  connection: string;
  /** Name of the node holding the connection. */
  node: string;
  /** The authenticated user. */
  user: string;
  /** How often the server pings, in milliseconds. */
  pingInterval: number;
  /** When the token expires; undefined when it never does. */
  expires?: Date;
  /** The connection's limits. */
  limits?: Limits;
}

/** The minimal WebSocket the client needs: the browser's, or the npm `ws` package's. */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  readonly readyState: number;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor: globalThis.WebSocket, or `WebSocket` from the `ws` package in Node. */
export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

/** A logger; every method is optional. */
export interface Logger {
  debug?(msg: string, data?: object): void;
  info?(msg: string, data?: object): void;
  warn?(msg: string, data?: object): void;
}

/** Options of a Client. Every duration is in milliseconds. */
export interface ClientOptions {
  /** A fixed token. It is never refreshed. Give this or getToken. */
  token?: string;
  /**
   * Returns a token for the next connect or refresh. It is called before every connect
   * attempt and, when the token expires, before it does. A rejection fails the attempt,
   * which is retried with backoff.
   */
  getToken?: () => Promise<string>;
  /** "json" (default) or "protobuf" frames. */
  protocol?: "json" | "protobuf";
  /** Reconnect schedule (default min 500, max 20000, floor 10). */
  backoff?: Partial<Backoff>;
  /** How long a command waits for its result, counted from the call, including time queued offline (default 10000). */
  commandTimeout?: number;
  /** Bounds one connect attempt: the upgrade and the connect command's reply (default 10000). */
  connectTimeout?: number;
  /** How long past the server's ping interval the client waits for any frame before it reconnects (default 5000). */
  heartbeatGrace?: number;
  /** How long before the token's expiry it is refreshed (default 30000; at most half its remaining life). */
  refreshMargin?: number;
  /** Commands queued while offline (default 256); beyond it a command fails with QueueFullError. */
  queueSize?: number;
  /** The WebSocket implementation (default globalThis.WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** The random source of the backoff jitter, uniform in [0, 1) (default Math.random). */
  random?: () => number;
  /** The clock (default Date.now). */
  now?: () => number;
  /** Where the client logs (default: warnings to console.warn). */
  logger?: Logger;
  /** Receives errors thrown by the application's listeners (default console.error). */
  onListenerError?: (err: unknown) => void;
}

/** Options of any command. */
export interface CommandOptions {
  /** Aborts waiting for the result (the command may still be applied if it was sent). */
  signal?: AbortSignal;
  /** Overrides the client's command timeout. */
  timeout?: number;
}

/** Options of a publish. */
export interface PublishOptions extends CommandOptions {
  /** A retried publish with the same key is not delivered twice while the server remembers it. */
  idempotencyKey?: string;
}

/** Options of a history read. */
export interface HistoryOptions extends CommandOptions {
  /** Only messages after this position; unset: from the oldest retained. */
  since?: Position;
  /** At most this many messages; 0 or unset: the server's maximum. */
  limit?: number;
  /** Newest first. */
  reverse?: boolean;
}

/** A room's retained messages. */
export interface History {
  /** The messages, oldest first unless reverse was asked. */
  messages: Message[];
  /** The room's current position. */
  position: Position;
}

/** Events of a Client. */
export interface ClientEvents {
  /** Every state change, in order. */
  state: StateChange;
  /** A message sent to this user or connection directly. */
  direct: DirectMessage;
  /** A user arrived in a room this client is in (namespaces with join/leave events). */
  memberJoined: { room: string; member: ClientInfo };
  /** A user left a room this client is in (namespaces with join/leave events). */
  memberLeft: { room: string; member: ClientInfo };
  /**
   * The server joined the client to a room (a rooms claim of the token, or the
   * backend): attach listeners to the new subscription here; its messages follow.
   */
  serverJoin: Subscription;
}

type Cmd = MessageInitShape<typeof ClientCommandSchema>["command"];

interface Call {
  id: number;
  cmd: ClientCommand;
  sess?: Session;
  done(m: ServerMessage | undefined, err: Error | undefined): void;
}

/** One WebSocket connection, from the upgrade to its end. */
class Session {
  pending = new Map<number, Call>();
  dead = false;
  disc?: Disconnect;
  lastRecv: number;
  onFrame: (m: ServerMessage) => void = () => {};
  readonly ended: Promise<Error>;
  private resolveEnded!: (e: Error) => void;

  constructor(
    readonly ws: WebSocketLike,
    readonly binary: boolean,
    private readonly now: () => number,
  ) {
    this.lastRecv = now();
    this.ended = new Promise((r) => (this.resolveEnded = r));
    ws.onmessage = (ev) => {
      if (this.dead) return;
      this.lastRecv = this.now();
      let m: ServerMessage;
      try {
        m = decodeServerMessage(ev.data);
      } catch (err) {
        this.end(new Error(`roomcast: decode server message: ${(err as Error).message}`), 4007);
        return;
      }
      this.onFrame(m);
    };
    ws.onclose = (ev) => this.end(closeReason(ev.code, ev.reason, this.disc));
    ws.onerror = () => {}; // onclose follows and says more
  }

  write(cmd: ClientCommand): void {
    if (this.dead) return;
    try {
      this.ws.send(encodeCommand(cmd, this.binary));
    } catch (err) {
      this.end(new Error(`roomcast: write: ${(err as Error).message}`));
    }
  }

  /**
   * Ends the session at once: later events are ignored and the socket is closed
   * without waiting for the closing handshake (on a dead network it may never come).
   */
  end(reason: Error, code = 1000): void {
    if (this.dead) return;
    this.dead = true;
    this.ws.onmessage = null;
    this.ws.onclose = null;
    this.ws.onopen = null;
    try {
      this.ws.close(code);
    } catch {
      // already closing, or a socket still connecting in an implementation that throws
    }
    this.resolveEnded(reason);
  }
}

/** Turns a close event (and a Disconnect push, when one came) into the reason the connection ended. */
function closeReason(code: number, reason: string, disc?: Disconnect): Error {
  if (code !== 1005 && code !== 1006 && code !== 0) {
    let reconnect = closeCodeReconnects(code);
    if (disc && disc.code === code) {
      reason ||= disc.reason;
      reconnect &&= disc.reconnect;
    }
    return new CloseError(code, reason, reconnect);
  }
  if (disc) return new CloseError(disc.code, disc.reason, closeCodeReconnects(disc.code) && disc.reconnect);
  return new Error("roomcast: connection lost");
}

/** Reports whether err forbids reconnecting. */
function isStop(err: Error, haveGetToken: boolean): boolean {
  if (err instanceof CloseError) return !err.reconnect;
  if (err instanceof RoomcastError) {
    if (err.temporary) return false;
    if (err.code === ErrorCode.TOKEN_EXPIRED) return !haveGetToken;
    return true;
  }
  return false;
}

const noop = () => {};

/**
 * Client is a roomcast WebSocket client. It holds at most one connection at a time
 * and keeps it alive: it authenticates with a token or a token function, answers the
 * server's pings, refreshes the token before it expires, and after an unexpected
 * disconnect reconnects with exponential backoff and full jitter, re-joins every room
 * it was in and recovers the messages it missed. Whether recovery succeeded is always
 * reported (JoinInfo.recovered / gap): a gap means the application must re-sync that
 * room from its own source of truth.
 *
 * Close codes 4500-4999 stop the client (state "closed"); 4000 (the node is draining)
 * makes it reconnect at once with a little jitter; every other reason reconnects with
 * backoff. Commands issued while offline are queued (up to queueSize) and sent in
 * order after the next connect; commands sent but unanswered when the connection
 * broke fail with ConnectionLostError.
 *
 * Listeners run synchronously in the order the server sent the frames.
 */
export class Client {
  private readonly url: string;
  private readonly o: Required<Omit<ClientOptions, "token" | "getToken" | "backoff" | "logger" | "onListenerError">> & {
    token?: string;
    getToken?: () => Promise<string>;
  };
  private readonly backoff: Backoff;
  private readonly log: Logger;
  private readonly events: Emitter<ClientEvents>;
  private readonly onListenerError: (err: unknown) => void;

  private st: State = "disconnected";
  private started = false;
  private closeErr?: Error;
  private lastErr?: Error;
  private sess?: Session;
  private queue: Call[] = [];
  private nextID = 0;
  private readonly subs = new Map<string, Subscription>();
  private connInfo?: ConnInfo;
  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private wake: () => void = noop; // ends the current backoff wait or connect attempt
  private readonly closedP: Promise<void>;
  private resolveClosed!: () => void;
  private refreshes = 0;

  /** Creates a client for a WebSocket URL (ws:// or wss://). It does not connect; call connect(). */
  constructor(url: string, opts: ClientOptions = {}) {
    const u = new URL(url);
    if (u.protocol !== "ws:" && u.protocol !== "wss:") {
      throw new TypeError(`roomcast: url scheme must be ws or wss, not ${u.protocol}`);
    }
    if (!opts.token && !opts.getToken) throw new TypeError("roomcast: a token or getToken is required");
    if (opts.token && opts.getToken) throw new TypeError("roomcast: give a token or getToken, not both");
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new TypeError("roomcast: no WebSocket implementation; pass options.WebSocket (e.g. from the ws package)");
    for (const k of ["commandTimeout", "connectTimeout", "heartbeatGrace", "refreshMargin", "queueSize"] as const) {
      const v = opts[k];
      if (v !== undefined && !(v >= 0)) throw new RangeError(`roomcast: ${k} must not be negative`);
    }
    this.url = url;
    this.backoff = makeBackoff(opts.backoff);
    this.o = {
      token: opts.token,
      getToken: opts.getToken,
      protocol: opts.protocol ?? "json",
      commandTimeout: opts.commandTimeout || 10_000,
      connectTimeout: opts.connectTimeout || 10_000,
      heartbeatGrace: opts.heartbeatGrace || 5_000,
      refreshMargin: opts.refreshMargin || 30_000,
      queueSize: opts.queueSize || 256,
      WebSocket: WS,
      random: opts.random ?? Math.random,
      now: opts.now ?? Date.now,
    };
    this.log = opts.logger ?? { warn: (m, d) => console.warn(`roomcast: ${m}`, d ?? "") };
    this.onListenerError = opts.onListenerError ?? ((e) => console.error("roomcast: listener failed", e));
    this.events = new Emitter(this.onListenerError);
    this.closedP = new Promise((r) => (this.resolveClosed = r));
  }

  /** The current state. */
  get state(): State {
    return this.st;
  }

  /** What the server said about the current or last connection. */
  get info(): ConnInfo | undefined {
    return this.connInfo;
  }

  /** Why the client is closed, or undefined while it is not. */
  get error(): Error | undefined {
    return this.closeErr;
  }

  /** How many token refreshes the server acknowledged. */
  get refreshCount(): number {
    return this.refreshes;
  }

  /** Adds a listener and returns a function that removes it. */
  on<K extends keyof ClientEvents>(event: K, fn: (v: ClientEvents[K]) => void): () => void {
    return this.events.on(event, fn);
  }

  /** Removes a listener. */
  off<K extends keyof ClientEvents>(event: K, fn: (v: ClientEvents[K]) => void): void {
    this.events.off(event, fn);
  }

  /**
   * Starts the client and resolves once it is connected. It rejects with a
   * ClosedError when the client is or becomes closed, e.g. because the server
   * rejected the token (its cause says why). If the signal aborts first, the promise
   * rejects but the client keeps trying in the background until close().
   */
  connect(opts: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.st === "closed") return Promise.reject(this.closeErr);
    if (!this.started) {
      this.started = true;
      void this.run();
    }
    if (this.st === "connected") return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const w = { resolve, reject };
      this.waiters.push(w);
      opts.signal?.addEventListener("abort", () => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(this.lastErr ? new Error(`roomcast: connect aborted (last error: ${this.lastErr.message})`) : opts.signal!.reason);
      });
    });
  }

  /**
   * Closes the connection and stops the client for good. Commands waiting for a
   * result fail with ClosedError; subscriptions end. Idempotent; resolves when done.
   */
  close(): Promise<void> {
    if (this.st !== "closed") this.shutdown(new ClosedError());
    return this.closedP;
  }

  /** Publishes data (a JSON value, or a Uint8Array as binary) to room and resolves with its position. */
  async publish(room: string, data: Data, opts: PublishOptions = {}): Promise<Position> {
    const m = await this.do(
      { case: "publish", value: { room, payload: payloadToPB(data), idempotencyKey: opts.idempotencyKey ?? "" } },
      opts,
    );
    return posFromPB(m.body.case === "publish" ? m.body.value.position : undefined);
  }

  /** Sends data to the backend, which receives it as a client-message event. */
  async send(data: Data, opts: CommandOptions = {}): Promise<void> {
    await this.do({ case: "send", value: { payload: payloadToPB(data) } }, opts);
  }

  /** Returns the members of room, ordered by user. */
  async presence(room: string, opts: CommandOptions = {}): Promise<Member[]> {
    const m = await this.do({ case: "presence", value: { room } }, opts);
    return m.body.case === "presence" ? m.body.value.members.map(memberFromPB) : [];
  }

  /** Counts the users and connections in room. */
  async presenceStats(room: string, opts: CommandOptions = {}): Promise<{ users: number; connections: number }> {
    const m = await this.do({ case: "presenceStats", value: { room } }, opts);
    const s = m.body.case === "presenceStats" ? m.body.value : undefined;
    return { users: s?.users ?? 0, connections: s?.connections ?? 0 };
  }

  /** Reads room's retained messages. */
  async history(room: string, opts: HistoryOptions = {}): Promise<History> {
    const m = await this.do(
      {
        case: "history",
        value: { room, since: opts.since ? posToPB(opts.since) : undefined, limit: opts.limit ?? 0, reverse: !!opts.reverse },
      },
      opts,
    );
    const h = m.body.case === "history" ? m.body.value : undefined;
    return { messages: (h?.messages ?? []).map(messageFromPB), position: posFromPB(h?.position) };
  }

  /** The subscription of room, or undefined. */
  subscription(room: string): Subscription | undefined {
    return this.subs.get(room);
  }

  /** Every live subscription, ordered by room. */
  subscriptions(): Subscription[] {
    return [...this.subs.values()].sort((a, b) => (a.room < b.room ? -1 : a.room > b.room ? 1 : 0));
  }

  /**
   * Joins room and resolves with its subscription once the server confirmed the join.
   * While offline the join is queued like any command. After a reconnect the client
   * re-joins by itself, recovering from the last position received.
   */
  async join(room: string, opts: JoinOptions = {}): Promise<Subscription> {
    if (this.st === "closed") throw this.closeErr;
    if (this.subs.has(room)) throw new RoomcastError(ErrorCode.ALREADY_JOINED, "already subscribed to " + room);
    const sub = new Subscription(this, room, this.onListenerError);
    if (opts.onMessage) sub.on("message", opts.onMessage);
    if (opts.onJoin) sub.on("join", opts.onJoin);
    this.subs.set(room, sub);
    const from = opts.recoverFrom;
    try {
      await this.do({ case: "join", value: { room, recoverFrom: from ? posToPB(from) : undefined } }, opts, (m) => {
        if (sub.status === "pending") {
          this.applyJoin(sub, m.body.value as JoinResult, from, false, false);
          return;
        }
        // Left (or closed) while the join was on its way: leave on the server too.
        if (sub.status === "ended" && !this.subs.has(room) && this.sess) this.sendAside(this.sess, leaveCmd(room));
      });
    } catch (err) {
      if (err instanceof RoomcastError && err.code === ErrorCode.ALREADY_JOINED && sub.status === "established") {
        return sub; // the server joined us meanwhile (token rooms)
      }
      if (sub.status === "pending") this.endSub(sub, err as Error);
      throw err;
    }
    return sub;
  }

  /** @internal Leaves for Subscription.leave. */
  async leaveSub(sub: Subscription, opts: CommandOptions = {}): Promise<void> {
    if (sub.status === "ended") throw new NotSubscribedError();
    const wasPending = sub.status === "pending";
    this.endSub(sub, new NotSubscribedError());
    if (this.st !== "connected" || wasPending) return; // a pending join's reply finds it ended and leaves then
    try {
      await this.do(leaveCmd(sub.room), opts);
    } catch (err) {
      if (
        (err instanceof RoomcastError && err.code === ErrorCode.NOT_JOINED) ||
        err instanceof ConnectionLostError ||
        err instanceof ClosedError
      ) {
        return;
      }
      throw err;
    }
  }

  // ---- life cycle ----

  private setState(to: State, error?: Error): void {
    const from = this.st;
    if (from === "closed" || from === to) return;
    this.st = to;
    if (error) this.lastErr = error;
    if (to === "connected") {
      const w = this.waiters;
      this.waiters = [];
      for (const x of w) x.resolve();
    }
    this.events.emit("state", error ? { from, to, error } : { from, to });
  }

  /** Closes the client for good with err. */
  private shutdown(err: Error): void {
    if (this.st === "closed") return;
    const closed = err instanceof ClosedError ? err : new ClosedError(err);
    if (!(err instanceof ClosedError)) this.log.warn?.("stopped, not reconnecting", { error: err.message });
    this.closeErr = closed;
    const queued = this.queue;
    this.queue = [];
    for (const s of this.subscriptions()) this.endSub(s, closed);
    this.sess?.end(closed); // serve's teardown fails what is pending on it
    const from = this.st;
    this.st = "closed";
    this.wake();
    for (const c of queued) c.done(undefined, closed);
    const w = this.waiters;
    this.waiters = [];
    for (const x of w) x.reject(closed);
    this.events.emit("state", { from, to: "closed", error: err instanceof ClosedError && !err.cause ? undefined : err });
    this.resolveClosed();
  }

  /** Waits ms, or less when the client closes; resolves false when it closed. */
  private sleep(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.wake = noop;
        resolve(true);
      }, ms);
      this.wake = () => {
        clearTimeout(t);
        this.wake = noop;
        resolve(false);
      };
    });
  }

  private get closed(): boolean {
    return this.st === "closed";
  }

  /** The supervisor: it owns the connect / serve / back off cycle. */
  private async run(): Promise<void> {
    let attempt = 0;
    while (!this.closed) {
      this.setState("connecting");
      let sess: Session;
      let cr: ConnectResult;
      try {
        [sess, cr] = await this.handshake();
      } catch (e) {
        const err = e as Error;
        if (this.closed) return;
        if (isStop(err, !!this.o.getToken)) {
          this.shutdown(err);
          return;
        }
        this.log.debug?.("connect failed", { attempt, error: err.message });
        this.setState("disconnected", err);
        if (!(await this.sleep(backoffDelay(this.backoff, attempt, this.o.random())))) return;
        attempt++;
        continue;
      }
      attempt = 0;
      const reason = await this.serve(sess, cr);
      if (this.closed) return;
      if (isStop(reason, !!this.o.getToken)) {
        this.shutdown(reason);
        return;
      }
      this.log.info?.("disconnected, reconnecting", { error: reason.message });
      this.setState("disconnected", reason);
      let d: number;
      if (reason instanceof CloseError && closeCodeImmediate(reason.code)) {
        d = backoffDelay(this.backoff, 0, this.o.random());
      } else {
        d = backoffDelay(this.backoff, attempt, this.o.random());
        attempt++;
      }
      if (!(await this.sleep(d))) return;
    }
  }

  /** Dials, sends connect and waits for its reply. */
  private async handshake(): Promise<[Session, ConnectResult]> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let ws: WebSocketLike | undefined;
    let sess: Session | undefined;
    let settled = false;
    const attempt = new Promise<[Session, ConnectResult]>((resolve, reject) => {
      const fail = (e: Error) => {
        settled = true;
        sess?.end(e);
        if (ws && !sess) {
          ws.onopen = ws.onclose = ws.onmessage = null;
          // Not null: closing a socket that is still connecting makes Node's ws emit
          // "closed before the connection was established", which would be an
          // uncaught exception without a listener.
          ws.onerror = () => {};
          try {
            ws.close();
          } catch {
            // still connecting in an implementation that throws
          }
        }
        reject(e);
      };
      timer = setTimeout(() => fail(new Error("roomcast: connect timed out")), this.o.connectTimeout);
      this.wake = () => fail(new ClosedError());
      const token = this.o.getToken
        ? this.o.getToken().catch((e: unknown) => {
            throw new Error(`roomcast: getToken: ${(e as Error)?.message ?? e}`);
          })
        : Promise.resolve(this.o.token!);
      token.then((tok) => {
        if (settled) return; // timed out or closed while the token was on its way
        if (this.closed) return fail(new ClosedError());
        const binary = this.o.protocol === "protobuf";
        const want = binary ? SUBPROTOCOL_PROTO : SUBPROTOCOL_JSON;
        try {
          ws = new this.o.WebSocket(this.url, [want]);
        } catch (e) {
          return fail(e as Error);
        }
        ws.binaryType = "arraybuffer";
        ws.onerror = () => {};
        ws.onclose = (ev) => fail(closeReason(ev.code, ev.reason));
        ws.onopen = () => {
          if (ws!.protocol !== want) {
            return fail(new Error(`roomcast: server chose subprotocol "${ws!.protocol}", want "${want}"`));
          }
          const s = new Session(ws!, binary, this.o.now);
          sess = s;
          const id = this.newID();
          s.ended.then(fail);
          s.onFrame = (m) => {
            if (m.body.case === "disconnect") {
              s.disc = m.body.value;
              return;
            }
            if (m.id !== id) return; // nothing else is expected before the connect reply
            if (m.error) {
              const e = new RoomcastError(m.error.code, m.error.message, m.error.temporary);
              return fail(e);
            }
            if (m.body.case !== "connect") return fail(new Error("roomcast: connect reply without a result"));
            settled = true;
            resolve([s, m.body.value]);
          };
          s.write(command(id, { case: "connect", value: { token: tok, client: CLIENT_NAME } }));
        };
      }, fail);
    });
    try {
      return await attempt;
    } finally {
      clearTimeout(timer);
      this.wake = noop;
    }
  }

  private newID(): number {
    this.nextID = (this.nextID + 1) >>> 0 || 1;
    return this.nextID;
  }

  /** Runs one established connection until it ends and resolves with why. */
  private serve(s: Session, cr: ConnectResult): Promise<Error> {
    const pi = cr.pingInterval;
    const interval = pi ? Number(pi.seconds) * 1000 + Math.floor(pi.nanos / 1e6) : 0;
    const expires = cr.expires ? new Date(Number(cr.expires.seconds) * 1000 + Math.floor(cr.expires.nanos / 1e6)) : undefined;
    this.connInfo = { connection: cr.connection, node: cr.node, user: cr.user, pingInterval: interval, expires, limits: cr.limits };
    this.sess = s;
    s.onFrame = (m) => this.handle(s, m);
    this.wake = () => s.end(new ClosedError());

    // Rooms the server joined us to at connect come first, before any push.
    const auto = new Set<string>();
    for (const jr of cr.rooms) {
      auto.add(jr.room);
      this.serverJoin(jr);
    }
    // Re-join every room we were in, recovering from the last position received; the
    // re-joins go ahead of the application's queued commands.
    const rejoins: Call[] = [];
    for (const sub of this.subscriptions()) {
      if (sub.status === "established" && !auto.has(sub.room)) rejoins.push(this.rejoinCall(sub));
    }
    const batch = [...rejoins, ...this.queue];
    this.queue = [];
    for (const c of batch) {
      c.sess = s;
      s.pending.set(c.id, c);
    }
    for (const c of batch) s.write(c.cmd);
    if (!s.dead) this.setState("connected");

    // Heartbeat: a server silent for longer than its ping interval plus the grace is gone.
    let hb: ReturnType<typeof setTimeout> | undefined;
    if (interval > 0) {
      const limit = interval + this.o.heartbeatGrace;
      const check = (): void => {
        const idle = this.o.now() - s.lastRecv;
        if (idle >= limit) {
          s.end(new Error(`roomcast: server silent for ${idle} ms (ping interval ${interval} ms)`));
          return;
        }
        hb = setTimeout(check, limit - idle);
      };
      hb = setTimeout(check, limit);
    }
    let refresh: ReturnType<typeof setTimeout> | undefined;
    if (this.o.getToken && expires) {
      let attempt = 0;
      const schedule = (exp: Date | undefined, wait?: number): void => {
        if (s.dead || (!exp && wait === undefined)) return;
        refresh = setTimeout(() => {
          void this.refresh().then(
            (next) => {
              attempt = 0;
              schedule(next);
            },
            (err: Error) => {
              if (s.dead) return;
              // The server closes with token_expired if we never succeed; the reconnect then fetches a new token.
              this.log.warn?.("token refresh failed", { error: err.message });
              schedule(exp, backoffDelay(this.backoff, attempt++, this.o.random()));
            },
          );
        }, wait ?? this.refreshWait(exp!));
      };
      schedule(expires);
    }
    return s.ended.then((reason) => {
      clearTimeout(hb);
      clearTimeout(refresh);
      this.wake = noop;
      this.teardown(s, reason);
      return reason;
    });
  }

  private refreshWait(exp: Date): number {
    const left = exp.getTime() - this.o.now();
    return Math.max(left - Math.min(this.o.refreshMargin, left / 2), 0);
  }

  private async refresh(): Promise<Date | undefined> {
    let token: string;
    try {
      token = await this.o.getToken!();
    } catch (e) {
      throw new Error(`roomcast: getToken: ${(e as Error)?.message ?? e}`);
    }
    const m = await this.do({ case: "refresh", value: { token } }, {});
    const e = m.body.case === "refresh" ? m.body.value.expires : undefined;
    const next = e ? new Date(Number(e.seconds) * 1000 + Math.floor(e.nanos / 1e6)) : undefined;
    if (this.connInfo) this.connInfo.expires = next;
    this.refreshes++;
    return next;
  }

  /** Fails every command still waiting on s. */
  private teardown(s: Session, reason: Error): void {
    if (this.sess === s) this.sess = undefined;
    const pending = [...s.pending.values()].sort((a, b) => a.id - b.id);
    s.pending.clear();
    // Subscriptions that were being re-joined stay to be re-joined next time.
    for (const sub of this.subs.values()) {
      if (sub.status === "rejoining") {
        sub.status = "established";
        sub.early = [];
      }
    }
    const err = reason instanceof ClosedError ? reason : new ConnectionLostError(reason);
    for (const c of pending) c.done(undefined, err);
  }

  // ---- commands ----

  /** Sends cmd (or queues it while offline) and resolves with its reply; hook runs with a successful reply before any later frame. */
  private do(cmd: Cmd, opts: CommandOptions, hook?: (m: ServerMessage) => void): Promise<ServerMessage> {
    return new Promise<ServerMessage>((resolve, reject) => {
      if (opts.signal?.aborted) return reject(opts.signal.reason);
      if (this.closed) return reject(this.closeErr);
      const timeout = opts.timeout ?? this.o.commandTimeout;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const cleanup = () => {
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
      };
      const cl: Call = {
        id: this.newID(),
        cmd: command(0, cmd),
        done: (m, err) => {
          cleanup();
          if (err) return reject(err);
          if (m!.error) return reject(new RoomcastError(m!.error.code, m!.error.message, m!.error.temporary));
          hook?.(m!);
          resolve(m!);
        },
      };
      cl.cmd.id = cl.id;
      const giveUp = (err: Error) => {
        if (this.withdraw(cl)) {
          cleanup();
          reject(err);
        }
      };
      const onAbort = () => giveUp(opts.signal!.reason as Error);
      opts.signal?.addEventListener("abort", onAbort);
      timer = setTimeout(() => giveUp(new TimeoutError(timeout)), timeout);
      const s = this.sess;
      if (this.st === "connected" && s && !s.dead) {
        cl.sess = s;
        s.pending.set(cl.id, cl);
        s.write(cl.cmd);
        return;
      }
      if (this.queue.length >= this.o.queueSize) {
        cleanup();
        return reject(new QueueFullError());
      }
      this.queue.push(cl);
    });
  }

  /** Removes cl from wherever it waits; false means it was answered already. */
  private withdraw(cl: Call): boolean {
    if (cl.sess) return cl.sess.pending.get(cl.id) === cl && cl.sess.pending.delete(cl.id);
    const i = this.queue.indexOf(cl);
    if (i < 0) return false;
    this.queue.splice(i, 1);
    return true;
  }

  /** Sends cmd on s without anyone waiting for the reply (a leave nobody waits for). */
  private sendAside(s: Session, cmd: Cmd): void {
    if (s.dead) return;
    const cl: Call = { id: this.newID(), cmd: command(0, cmd), sess: s, done: noop };
    cl.cmd.id = cl.id;
    s.pending.set(cl.id, cl);
    s.write(cl.cmd);
  }

  /** Dispatches one server message. */
  private handle(s: Session, m: ServerMessage): void {
    if (m.id !== 0) {
      const cl = s.pending.get(m.id);
      s.pending.delete(m.id);
      if (cl) {
        cl.done(m, undefined);
        return;
      }
      // A reply nobody waits for: a join whose caller gave up is left again unless wanted.
      if (m.body.case === "join") {
        const sub = this.subs.get(m.body.value.room);
        if (!sub || sub.status !== "established") this.sendAside(s, leaveCmd(m.body.value.room));
      }
      return;
    }
    const b = m.body;
    switch (b.case) {
      case "message": {
        const sub = this.subs.get(b.value.room);
        if (!sub) return; // left meanwhile
        if (sub.status === "pending" || sub.status === "rejoining") sub.early.push(b.value);
        else if (sub.status === "established") this.accept(sub, b.value, s);
        return;
      }
      case "ping":
        s.write(command(0, { case: "pong", value: {} }));
        return;
      case "joined":
        if (b.value.join) this.serverJoin(b.value.join);
        return;
      case "left": {
        const sub = this.subs.get(b.value.room);
        if (sub) this.endSub(sub, new LeftError(b.value.room, b.value.reason));
        return;
      }
      case "memberJoined":
        this.events.emit("memberJoined", { room: b.value.room, member: infoFromPB(b.value.member) });
        return;
      case "memberLeft":
        this.events.emit("memberLeft", { room: b.value.room, member: infoFromPB(b.value.member) });
        return;
      case "direct":
        this.events.emit("direct", payloadFromPB(b.value.payload));
        return;
      case "disconnect":
        s.disc = b.value;
        return;
      default:
        this.log.debug?.("ignoring unknown server message", { case: b.case });
    }
  }

  /** Handles a join made by the server. */
  private serverJoin(jr: JoinResult): void {
    if (this.closed) return;
    let sub = this.subs.get(jr.room);
    let created = false;
    if (!sub) {
      sub = new Subscription(this, jr.room, this.onListenerError);
      this.subs.set(jr.room, sub);
      created = true;
      this.events.emit("serverJoin", sub); // listeners attach before the join's messages
    }
    this.applyJoin(sub, jr, undefined, !created && sub.status !== "pending", true);
  }

  /** Records a join's result, delivers its report and recovered messages, then pushes that raced ahead of it. */
  private applyJoin(sub: Subscription, jr: JoinResult, from: Position | undefined, rejoin: boolean, server: boolean, resync = false): void {
    const room = posFromPB(jr.position);
    const recovered = from !== undefined && jr.recovered;
    const info: JoinInfo = {
      room: sub.room,
      position: room,
      recoverable: jr.recoverable,
      rejoin: rejoin || resync,
      resync,
      server,
      recoveryAsked: from !== undefined,
      recovered,
      missed: recovered ? jr.messages.length : 0,
      gap: (rejoin || resync) && !recovered,
    };
    sub.status = "established";
    sub.recoverable = info.recoverable;
    sub.last = info;
    sub.events.emit("join", info);
    if (recovered) {
      if (from.epoch !== sub.pos.epoch) sub.prevEpoch = "";
      sub.pos = { ...from };
      for (const m of jr.messages) this.accept(sub, m);
    }
    if (sub.pos.epoch !== room.epoch || sub.pos.offset < room.offset) {
      if (sub.pos.epoch !== room.epoch) {
        // Handed over with nothing published since, or a new stream.
        sub.prevEpoch = recovered && sub.pos.offset === room.offset ? sub.pos.epoch : "";
      }
      sub.pos = room;
    }
    this.drainEarly(sub);
  }

  /** Delivers the pushes that arrived before a join's reply. */
  private drainEarly(sub: Subscription): void {
    const early = sub.early;
    sub.early = [];
    for (const m of early) this.accept(sub, m);
  }

  /**
   * Delivers m unless it was delivered already. A gap before m (see
   * Subscription.follows) found on a live push (live is the session it came on) in a
   * room that keeps history starts a re-sync, and m waits for it. Anywhere else (a
   * room without history, messages of a join reply or of a history read) the gap is
   * reported to the join listeners before m is delivered: recovering again what the
   * server just answered could loop.
   */
  private accept(sub: Subscription, m: RoomMessage, live?: Session): void {
    switch (sub.follows(m)) {
      case "dup":
        sub.dups++;
        return;
      case "gap": {
        sub.gaps++;
        const d = { room: sub.room, after: { ...sub.pos }, got: { epoch: m.epoch, offset: Number(m.offset) } };
        if (live && sub.recoverable) {
          this.log.info?.("gap in room stream, re-joining to recover", d);
          this.resync(sub, m, live);
          return;
        }
        this.log.warn?.("gap in room stream", d);
        this.reportGap(sub, m);
      }
    }
    sub.deliver(m);
  }

  /**
   * Starts repairing a gap before m, a push that came on s: it leaves the room and
   * re-joins it, recovering from the last position delivered, or, for a membership the
   * server made (which the client may have no right to re-join), it reads the room's
   * history after that position. m and the pushes that follow wait in sub.early for
   * the reply, which delivers the recovered messages first and drops what they cover.
   * The subscription is rejoining meanwhile, so at most one re-sync is in flight.
   */
  private resync(sub: Subscription, m: RoomMessage, s: Session): void {
    if (this.sess !== s || s.dead) return; // the connection is ending: the reconnect re-joins from sub.pos
    sub.early.push(m);
    if (sub.last?.server) {
      const read = this.historyCall(sub, { ...sub.pos });
      read.sess = s;
      s.pending.set(read.id, read);
      s.write(read.cmd);
      return;
    }
    this.sendAside(s, leaveCmd(sub.room));
    const join = this.rejoinCall(sub, true);
    join.sess = s;
    s.pending.set(join.id, join);
    s.write(join.cmd);
  }

  /** Tells the join listeners that messages were missed before m, which is delivered next. */
  private reportGap(sub: Subscription, m: RoomMessage): void {
    const off = Number(m.offset);
    const info: JoinInfo = {
      room: sub.room,
      position: { epoch: m.epoch, offset: off > 0 ? off - 1 : 0 },
      recoverable: sub.recoverable,
      rejoin: true,
      resync: true,
      server: sub.last?.server ?? false,
      recoveryAsked: false,
      recovered: false,
      missed: 0,
      gap: true,
    };
    sub.last = info;
    sub.events.emit("join", info);
  }

  /**
   * Builds the re-join of sub, after a reconnect or to repair a gap in the live stream
   * (resync), recovering from its last position when the room keeps history.
   */
  private rejoinCall(sub: Subscription, resync = false): Call {
    const from = sub.recoverable && sub.pos.epoch !== "" ? { ...sub.pos } : undefined;
    sub.status = "rejoining";
    const cl: Call = {
      id: this.newID(),
      cmd: command(0, { case: "join", value: { room: sub.room, recoverFrom: from ? posToPB(from) : undefined } }),
      done: (m, err) => {
        if (sub.status !== "rejoining") {
          // Left (or closed) while the re-join was on its way: leave on the server too,
          // unless the room is wanted again.
          if (!err && m?.body.case === "join" && sub.status === "ended" && !this.subs.has(sub.room) && this.sess) {
            this.sendAside(this.sess, leaveCmd(sub.room));
          }
          return;
        }
        if (err) {
          sub.status = "established"; // try again at the next connect
          sub.early = [];
          return;
        }
        if (m!.error) {
          const e = new RoomcastError(m!.error.code, m!.error.message, m!.error.temporary);
          if (e.temporary) {
            sub.status = "established";
            sub.early = [];
            this.sess?.end(e); // reconnect with backoff and try again
            return;
          }
          if (e.code === ErrorCode.ALREADY_JOINED) {
            sub.status = "established"; // the server joined us itself
            if (resync) this.drainEarly(sub); // the gap cannot be repaired: report it
            return;
          }
          this.log.warn?.("re-join failed", { room: sub.room, error: e.message });
          this.endSub(sub, e);
          return;
        }
        this.applyJoin(sub, m!.body.value as JoinResult, from, true, false, resync);
      },
    };
    cl.cmd.id = cl.id;
    return cl;
  }

  /**
   * Builds the re-sync of a membership the server made: a read of the history of sub's
   * room after from, applied like a join recovering from from, recovered only when the
   * history holds every message after from up to the room's position. Whether from is
   * on the room's current stream (the same epoch, or an earlier one the offsets went on
   * from) is the server's call: it refuses a position of another stream, and then
   * nothing is recovered. It makes sub wait for the reply.
   */
  private historyCall(sub: Subscription, from: Position): Call {
    sub.status = "rejoining";
    const cl: Call = {
      id: this.newID(),
      cmd: command(0, { case: "history", value: { room: sub.room, since: posToPB(from) } }),
      done: (m, err) => {
        if (sub.status !== "rejoining") return;
        if (err) {
          sub.status = "established"; // try again at the next connect
          sub.early = [];
          return;
        }
        const h = m!.body.case === "history" ? m!.body.value : undefined;
        if (m!.error || !h) {
          // No position to go on from: the message after the gap, waiting in
          // sub.early, reports it.
          sub.status = "established";
          this.drainEarly(sub);
          return;
        }
        const end = posFromPB(h.position);
        const run = recoveredRun(from, end, h.messages);
        const res = create(JoinResultSchema, { room: sub.room, position: h.position, recoverable: true, recovered: !!run, messages: run ?? [] });
        this.applyJoin(sub, res, from, true, true, true);
      },
    };
    cl.cmd.id = cl.id;
    return cl;
  }

  private endSub(sub: Subscription, err: Error): void {
    if (this.subs.get(sub.room) === sub) this.subs.delete(sub.room);
    sub.end(err);
  }
}

function command(id: number, cmd: Cmd): ClientCommand {
  return create(ClientCommandSchema, { id, command: cmd });
}

/** The messages of hist that follow from without a hole, up to the offset of to; undefined when they do not reach it. */
function recoveredRun(from: Position, to: Position, hist: RoomMessage[]): RoomMessage[] | undefined {
  const run: RoomMessage[] = [];
  let next = from.offset + 1;
  for (const m of hist) {
    const off = Number(m.offset);
    if (off < next || off > to.offset) continue;
    if (off !== next) break; // a hole: not recoverable
    run.push(m);
    next++;
  }
  return next === to.offset + 1 ? run : undefined;
}

function leaveCmd(room: string): Cmd {
  return { case: "leave", value: { room } };
}

export type { Message, Position, Member, ClientInfo, DirectMessage, Data };
