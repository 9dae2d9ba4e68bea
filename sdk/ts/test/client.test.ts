import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  Client,
  CloseError,
  ClosedError,
  ConnectionLostError,
  ErrorCode,
  LeftError,
  QueueFullError,
  RoomcastError,
  TimeoutError,
  backoffCeiling,
  backoffDelay,
  makeBackoff,
  type ClientOptions,
  type JoinInfo,
  type Message,
  type StateChange,
} from "../src/index.js";
import { FakeServer } from "./fake.js";

const tick = () => vi.advanceTimersByTimeAsync(0);
const wait = (ms: number) => vi.advanceTimersByTimeAsync(ms);

let server: FakeServer;
let clients: Client[];

beforeEach(() => {
  vi.useFakeTimers();
  server = new FakeServer();
  clients = [];
});

afterEach(async () => {
  for (const c of clients) await c.close();
  expect(vi.getTimerCount()).toBe(0); // a closed client leaves no timer behind
  vi.useRealTimers();
});

function newClient(opts: ClientOptions = {}): Client {
  const c = new Client("ws://fake/ws", {
    token: opts.getToken ? undefined : "tok",
    WebSocket: server.WebSocket,
    random: () => 0.5,
    logger: {},
    ...opts,
  });
  clients.push(c);
  return c;
}

async function connected(opts: ClientOptions = {}): Promise<Client> {
  const c = newClient(opts);
  const p = c.connect();
  await tick();
  await p;
  return c;
}

describe("backoff", () => {
  const b = makeBackoff({ min: 500, max: 20_000 });
  it.each([
    [0, 500],
    [1, 1000],
    [3, 4000],
    [6, 20_000],
    [100, 20_000],
  ])("ceiling of attempt %i is %i", (attempt, want) => {
    expect(backoffCeiling(b, attempt)).toBe(want);
  });
  it("is full jitter with a floor", () => {
    expect(backoffDelay(b, 3, 0.5)).toBe(2000);
    expect(backoffDelay(b, 3, 0)).toBe(10);
    expect(backoffDelay(b, 3, 0.999)).toBeLessThan(4000);
  });
  it("rejects bad schedules", () => {
    expect(() => makeBackoff({ min: 0 })).toThrow(RangeError);
    expect(() => makeBackoff({ min: 100, max: 50 })).toThrow(RangeError);
    expect(() => makeBackoff({ min: 100, floor: 200 })).toThrow(RangeError);
  });
});

describe("options", () => {
  it.each([
    ["http scheme", "http://x/ws", { token: "t" }],
    ["no token", "ws://x/ws", {}],
    ["token and getToken", "ws://x/ws", { token: "t", getToken: async () => "t" }],
    ["negative timeout", "ws://x/ws", { token: "t", commandTimeout: -1 }],
  ])("rejects %s", (_name, url, opts) => {
    expect(() => new Client(url, { WebSocket: server.WebSocket, ...opts })).toThrow();
  });
});

describe("connect", () => {
  it.each(["json", "protobuf"] as const)("authenticates and reports states (%s frames)", async (protocol) => {
    const states: StateChange[] = [];
    const c = newClient({ protocol });
    c.on("state", (s) => states.push(s));
    const p = c.connect();
    await tick();
    await p;
    expect(c.state).toBe("connected");
    expect(states.map((s) => s.to)).toEqual(["connecting", "connected"]);
    expect(server.last.protocols).toEqual([protocol === "json" ? "roomcast.v1.json" : "roomcast.v1.proto"]);
    const conn = server.of("connect")[0];
    expect(conn.command.value).toMatchObject({ token: "tok", client: "roomcast-ts/0.1" });
    expect(c.info).toMatchObject({ connection: "conn-1", node: "n1", user: "alice" });
  });

  it("stops on a close code that forbids reconnecting", async () => {
    server.override = (cmd, ws) => {
      if (cmd.command.case === "connect") ws.drop(4500, "bad token");
      return null;
    };
    const c = newClient();
    const p = expect(c.connect()).rejects.toBeInstanceOf(ClosedError);
    await tick();
    await p;
    expect(c.state).toBe("closed");
    expect((c.error as ClosedError).cause).toBeInstanceOf(CloseError);
    await wait(60_000);
    expect(server.sockets).toHaveLength(1); // never reconnected
  });

  it("stops on a permanent connect error, retries a temporary one", async () => {
    let n = 0;
    server.override = (cmd) =>
      cmd.command.case === "connect" && n++ === 0 ? { error: { code: ErrorCode.UNAVAILABLE, message: "draining", temporary: true } } : undefined;
    const c = newClient();
    const p = c.connect();
    await wait(1000);
    await p;
    expect(server.sockets).toHaveLength(2);

    server.override = (cmd) => (cmd.command.case === "connect" ? { error: { code: ErrorCode.PERMISSION_DENIED, message: "no" } } : undefined);
    const c2 = newClient();
    await expect(Promise.all([c2.connect(), tick()])).rejects.toBeInstanceOf(ClosedError);
    expect((c2.error as ClosedError).cause).toBeInstanceOf(RoomcastError);
  });

  it("a token function gets a fresh token for every attempt, and token_expired is retried with it", async () => {
    let n = 0;
    const getToken = vi.fn(async () => `t${++n}`);
    server.override = (cmd) => {
      if (cmd.command.case === "connect" && cmd.command.value.token === "t1") return { error: { code: ErrorCode.TOKEN_EXPIRED, message: "expired" } };
      return undefined;
    };
    const c = newClient({ getToken });
    const p = c.connect();
    await wait(1000);
    await p;
    expect(server.of("connect").map((x) => (x.command.value as { token: string }).token)).toEqual(["t1", "t2"]);
  });

  it("a token that arrives after the connect timeout opens no socket", async () => {
    let late: (t: string) => void = () => {};
    let n = 0;
    const getToken = () => (n++ === 0 ? new Promise<string>((r) => (late = r)) : Promise.resolve("t2"));
    const c = newClient({ getToken, connectTimeout: 1000 });
    void c.connect().catch(() => {});
    await wait(1000); // the first attempt times out
    late("t1");
    await wait(1000);
    expect(c.state).toBe("connected");
    expect(server.sockets).toHaveLength(1);
    expect(server.of("connect").map((x) => (x.command.value as { token: string }).token)).toEqual(["t2"]);
  });

  it("a connect attempt that hangs times out and is retried", async () => {
    server.answerDials = false;
    const c = newClient({ connectTimeout: 1000 });
    void c.connect().catch(() => {});
    await wait(1000);
    expect(c.state).toBe("disconnected");
    server.answerDials = true;
    await wait(1000);
    expect(c.state).toBe("connected");
    expect(server.sockets[0].closedWith).toBeDefined();
  });
});

describe("reconnect", () => {
  it("backs off exponentially with full jitter while the node is down, then recovers", async () => {
    const c = await connected({ random: () => 0.999 });
    server.up = false;
    server.last.drop(1006);
    const times: number[] = [];
    const start = Date.now();
    c.on("state", (s) => s.to === "connecting" && times.push(Date.now() - start));
    await wait(10_000);
    // Waits of ~500, ~1000, ~2000, ~4000 ms (random 0.999 of each ceiling).
    const gaps = times.map((t, i) => t - (i ? times[i - 1] : 0));
    expect(gaps.slice(0, 4).map((g) => Math.round(g / 100) * 100)).toEqual([500, 1000, 2000, 4000]);
    server.up = true;
    await wait(20_000);
    expect(c.state).toBe("connected");
  });

  it("reconnects at once after 4000 shutdown, and with backoff after other codes", async () => {
    const c = await connected({ random: () => 0.999, backoff: { min: 1000, max: 60_000 } });
    for (let i = 0; i < 3; i++) {
      server.last.drop(4001, "slow"); // attempt grows: 1000, 2000, 4000...
      await wait(1000 * 2 ** i);
      await tick();
      expect(c.state).toBe("connected");
    }
    server.last.drop(4000, "shutdown");
    await wait(999); // shutdown: the ceiling of attempt 0 only
    expect(c.state).toBe("connected");
    expect(server.sockets).toHaveLength(5);
  });

  it("rejoins every room and recovers the missed messages in order", async () => {
    const got: number[] = [];
    const joins: JoinInfo[] = [];
    const c = await connected();
    const sub = await c.join("chat:a", { onMessage: (m) => got.push((m.data as { n: number }).n), onJoin: (j) => joins.push(j) });
    server.publish("chat:a", { n: 1 });
    server.publish("chat:a", { n: 2 });
    expect(got).toEqual([1, 2]);
    server.last.drop(1006);
    for (let n = 3; n <= 6; n++) server.room("chat:a").add({ n }); // published while we are away
    await wait(1000);
    expect(c.state).toBe("connected");
    const rejoin = server.of("join")[1].command.value as { recoverFrom?: { epoch: string; offset: bigint } };
    expect(rejoin.recoverFrom).toMatchObject({ epoch: "e1", offset: 2n });
    server.publish("chat:a", { n: 7 });
    expect(got).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(joins.map((j) => [j.rejoin, j.recovered, j.missed, j.gap])).toEqual([
      [false, false, 0, false],
      [true, true, 4, false],
    ]);
    expect(sub.position).toEqual({ epoch: "e1", offset: 7 });
  });

  it("reports a gap honestly when the history did not survive", async () => {
    const joins: JoinInfo[] = [];
    const got: Message[] = [];
    const c = await connected();
    await c.join("chat:a", { onJoin: (j) => joins.push(j), onMessage: (m) => got.push(m) });
    server.publish("chat:a", { n: 1 });
    server.last.drop(4000);
    server.room("chat:a").restart("e2");
    await wait(1000);
    expect(joins[1]).toMatchObject({ rejoin: true, recoveryAsked: true, recovered: false, gap: true, position: { epoch: "e2", offset: 0 } });
    server.publish("chat:a", { n: 1 });
    expect(got.map((m) => m.position)).toEqual([
      { epoch: "e1", offset: 1 },
      { epoch: "e2", offset: 1 },
    ]);
  });

  it("drops duplicates and delivers pushes that raced ahead of the join reply", async () => {
    const got: number[] = [];
    const c = await connected();
    server.override = (cmd, ws) => {
      if (cmd.command.case !== "join") return undefined;
      ws.joined.add("chat:a");
      server.publish("chat:a", { n: 1 }); // arrives before the reply
      return {
        body: { case: "join", value: { room: "chat:a", position: { epoch: "e1", offset: 0n }, recoverable: true } },
      };
    };
    const sub = await c.join("chat:a", { onMessage: (m) => got.push((m.data as { n: number }).n) });
    server.last.push({ body: { case: "message", value: server.room("chat:a").messages[0] } }); // a duplicate
    server.publish("chat:a", { n: 2 });
    expect(got).toEqual([1, 2]);
    expect(sub.duplicates).toBe(1);
  });

  it("holds messages until the first listener is added", async () => {
    const c = await connected();
    const sub = await c.join("x");
    server.publish("x", "a");
    server.publish("x", "b");
    const got: unknown[] = [];
    sub.on("message", (m) => got.push(m.data));
    expect(got).toEqual(["a", "b"]);
  });
});

describe("heartbeat", () => {
  it("answers pings and reconnects when the server goes silent", async () => {
    server.pingInterval = 2;
    const c = await connected({ heartbeatGrace: 1000 });
    server.last.push({ body: { case: "ping", value: {} } });
    await tick();
    expect(server.of("pong")).toHaveLength(1);
    await wait(2900); // 2.9 s since the ping: still within 2 s + 1 s
    expect(c.state).toBe("connected");
    await wait(200);
    expect(c.state).not.toBe("connected");
    expect(server.sockets[0].closedWith).toBeDefined();
    await wait(1000);
    expect(c.state).toBe("connected");
    expect(server.sockets).toHaveLength(2);
  });
});

describe("token refresh", () => {
  it("refreshes before the token expires", async () => {
    server.expiresInSec = 120;
    let n = 0;
    const c = await connected({ getToken: async () => `t${++n}`, refreshMargin: 30_000 });
    await wait(89_000);
    expect(server.of("refresh")).toHaveLength(0);
    await wait(2000);
    expect(server.of("refresh").map((x) => (x.command.value as { token: string }).token)).toEqual(["t2"]);
    expect(c.refreshCount).toBe(1);
    expect(c.state).toBe("connected");
  });
});

describe("commands", () => {
  it("queues commands while offline and sends them in order after connect", async () => {
    const c = newClient();
    const p1 = c.publish("r", { a: 1 });
    const p2 = c.publish("r", { a: 2 });
    const ps = c.presence("r").catch((e) => e);
    void c.connect();
    await tick();
    expect(await p1).toEqual({ epoch: "e1", offset: 1 });
    expect(await p2).toEqual({ epoch: "e1", offset: 2 });
    expect((await ps).code).toBe(ErrorCode.UNKNOWN_COMMAND);
    expect(server.commands.map((x) => x.command.case)).toEqual(["connect", "publish", "publish", "presence"]);
  });

  it("fails fast when the offline queue is full", async () => {
    const c = newClient({ queueSize: 2 });
    const a = c.send("a");
    const b = c.send("b");
    await expect(c.send("c")).rejects.toBeInstanceOf(QueueFullError);
    await c.close();
    await expect(a).rejects.toBeInstanceOf(ClosedError);
    await expect(b).rejects.toBeInstanceOf(ClosedError);
  });

  it("fails a sent command with ConnectionLostError when the connection breaks", async () => {
    const c = await connected();
    server.override = () => null; // never answer
    const p = c.publish("r", 1);
    await tick();
    server.last.drop(1006);
    await expect(p).rejects.toBeInstanceOf(ConnectionLostError);
  });

  it("times out, counting time spent queued", async () => {
    const c = newClient({ commandTimeout: 3000 });
    const p = c.presence("r");
    const check = expect(p).rejects.toBeInstanceOf(TimeoutError);
    await wait(3000);
    await check;
    void c.connect();
    await tick();
    expect(server.of("presence")).toHaveLength(0); // withdrawn from the queue
  });

  it("can be aborted", async () => {
    const c = newClient();
    const ac = new AbortController();
    const p = c.history("r", { signal: ac.signal });
    ac.abort(new Error("stop"));
    await expect(p).rejects.toThrow("stop");
  });

  it("maps presence, stats, history, binary payloads and server errors", async () => {
    const c = await connected();
    server.override = (cmd) => {
      switch (cmd.command.case) {
        case "presence":
          return { body: { case: "presence", value: { members: [{ user: "bob", connections: ["c1"], info: { kind: { case: "stringValue", value: "B" } } }] } } };
        case "presenceStats":
          return { body: { case: "presenceStats", value: { users: 1, connections: 2 } } };
        case "history":
          expect(cmd.command.value).toMatchObject({ room: "chat:a", limit: 5, reverse: true, since: { epoch: "e1", offset: 3n } });
          return { body: { case: "history", value: { messages: server.room("chat:a").messages, position: { epoch: "e1", offset: 1n } } } };
        case "send":
          return { error: { code: ErrorCode.PERMISSION_DENIED, message: "nope" } };
      }
      return undefined;
    };
    expect(await c.presence("chat:a")).toEqual([{ user: "bob", connections: ["c1"], info: "B" }]);
    expect(await c.presenceStats("chat:a")).toEqual({ users: 1, connections: 2 });
    server.room("chat:a").add({ hello: "world" });
    const h = await c.history("chat:a", { since: { epoch: "e1", offset: 3 }, limit: 5, reverse: true });
    expect(h.messages.map((m) => m.data)).toEqual([{ hello: "world" }]);
    const err = await c.send({ x: 1 }).catch((e: RoomcastError) => e);
    expect(err).toBeInstanceOf(RoomcastError);
    expect(err).toMatchObject({ code: ErrorCode.PERMISSION_DENIED, message: "roomcast: permission_denied: nope" });

    server.override = undefined;
    const got: Message[] = [];
    await c.join("bin", { onMessage: (m) => got.push(m) });
    await c.publish("bin", new Uint8Array([0, 1, 255]), { idempotencyKey: "k1" });
    expect(got[0]).toMatchObject({ binary: true, data: new Uint8Array([0, 1, 255]) });
    expect(server.of("publish").at(-1)!.command.value).toMatchObject({ idempotencyKey: "k1" });
  });
});

describe("pushes", () => {
  it("delivers member events, direct messages, server joins and removals", async () => {
    const c = await connected();
    const events: string[] = [];
    c.on("memberJoined", (e) => events.push(`+${e.member.user}@${e.room}`));
    c.on("memberLeft", (e) => events.push(`-${e.member.user}@${e.room}`));
    c.on("direct", (d) => events.push(`direct ${JSON.stringify(d.data)}`));
    c.on("serverJoin", (sub) => {
      events.push(`joined ${sub.room}`);
      sub.on("message", (m) => events.push(`msg ${String(m.data)}`));
    });
    const ws = server.last;
    ws.push({ body: { case: "memberJoined", value: { room: "chat:a", member: { user: "bob" } } } });
    ws.push({ body: { case: "memberLeft", value: { room: "chat:a", member: { user: "bob" } } } });
    ws.push({ body: { case: "direct", value: { payload: { kind: { case: "jsonText", value: '{"hi":1}' } } } } });
    server.room("news").add("old");
    ws.joined.add("news");
    ws.push({
      body: {
        case: "joined",
        value: { join: { room: "news", position: { epoch: "e1", offset: 1n }, recoverable: true } },
      },
    });
    server.publish("news", "fresh");
    const sub = c.subscription("news")!;
    ws.push({ body: { case: "left", value: { room: "news", reason: "backend" } } });
    expect(events).toEqual(["+bob@chat:a", "-bob@chat:a", 'direct {"hi":1}', "joined news", "msg fresh"]);
    expect(sub.ended).toBe(true);
    expect(sub.error).toBeInstanceOf(LeftError);
    expect(c.subscription("news")).toBeUndefined();
  });

  it("a throwing listener does not break the client", async () => {
    const errors: unknown[] = [];
    const c = await connected({ onListenerError: (e) => errors.push(e) });
    const got: unknown[] = [];
    await c.join("x", {
      onMessage: (m) => {
        got.push(m.data);
        throw new Error("app bug");
      },
    });
    server.publish("x", 1);
    server.publish("x", 2);
    expect(got).toEqual([1, 2]);
    expect(errors).toHaveLength(2);
  });
});

describe("leave and close", () => {
  it("leaves a room and is not re-joined after a reconnect", async () => {
    const c = await connected();
    const a = await c.join("a");
    await c.join("b");
    await a.leave();
    expect(a.ended).toBe(true);
    server.last.drop(1006);
    await wait(1000);
    const rejoined = server.of("join").slice(2).map((x) => (x.command.value as { room: string }).room);
    expect(rejoined).toEqual(["b"]);
  });

  it("close ends everything and is idempotent", async () => {
    const c = await connected();
    const sub = await c.join("a");
    const states: string[] = [];
    c.on("state", (s) => states.push(s.to));
    await Promise.all([c.close(), c.close()]);
    expect(states).toEqual(["closed"]);
    expect(sub.ended).toBe(true);
    await expect(c.publish("a", 1)).rejects.toBeInstanceOf(ClosedError);
    await expect(c.connect()).rejects.toBeInstanceOf(ClosedError);
  });

  it("close during backoff stops reconnecting", async () => {
    const c = await connected();
    server.up = false;
    server.last.drop(1006);
    await wait(100);
    await c.close();
    await wait(60_000);
    expect(c.state).toBe("closed");
  });
});
