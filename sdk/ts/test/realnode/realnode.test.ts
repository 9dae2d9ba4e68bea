// The package against a real roomcast node (built from this repository; $ROOMCAST_BIN),
// over real sockets, in Node with the `ws` package as the WebSocket.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { Client, ClosedError, CloseError, type ClientOptions, type JoinInfo, type Message, type State } from "../../src/index.js";
// @ts-expect-error plain JS harness shared with the browser tests
import { RoomcastNode, waitFor } from "../harness/node.mjs";
// @ts-expect-error plain JS harness shared with the browser tests
import { CutProxy } from "../harness/proxy.mjs";

let node: InstanceType<typeof RoomcastNode>;
const clients: Client[] = [];

beforeAll(async () => {
  node = await new RoomcastNode({ logFile: process.env.ROOMCAST_NODE_LOG }).start();
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await node?.stop();
});

function client(user: string, opts: ClientOptions = {}, url = node.wsURL): Client {
  const c = new Client(url, {
    getToken: () => node.token(user),
    WebSocket: WebSocket as never,
    backoff: { min: 100, max: 1000 },
    logger: {},
    ...opts,
  });
  clients.push(c);
  return c;
}

const texts = (ms: Message[]) => ms.map((m) => (m.data as { text: string }).text);

describe.each(["json", "protobuf"] as const)("against a real node (%s frames)", (protocol) => {
  it("chats: publish, receive, presence, member events, history, send", async () => {
    const room = `chat:basic-${protocol}`;
    const a = client("alice", { protocol });
    const b = client("bob", { protocol });
    await Promise.all([a.connect(), b.connect()]);
    expect(a.info?.user).toBe("alice");
    const arrived: string[] = [];
    a.on("memberJoined", (e) => e.room === room && arrived.push(e.member.user));
    const gotA: Message[] = [];
    const gotB: Message[] = [];
    await a.join(room, { onMessage: (m) => gotA.push(m) });
    await b.join(room, { onMessage: (m) => gotB.push(m) });
    const pos = await b.publish(room, { text: "hello" });
    expect(pos.offset).toBe(1);
    await node.publish(room, { text: "from the backend" });
    await waitFor(() => gotA.length === 2 && gotB.length === 2, { what: "messages" });
    expect(texts(gotA)).toEqual(["hello", "from the backend"]);
    expect(gotA[0].publisher?.user).toBe("bob");
    expect(gotA[0].publisher?.info).toEqual({ name: "bob" });
    expect(gotA[1].publisher).toBeUndefined();
    await waitFor(() => arrived.includes("bob"), { what: "member joined" });
    const members = await a.presence(room);
    expect(members.map((m) => m.user)).toEqual(["alice", "bob"]);
    expect(await a.presenceStats(room)).toEqual({ users: 2, connections: 2 });
    const h = await a.history(room);
    expect(texts(h.messages)).toEqual(["hello", "from the backend"]);
    await b.send({ hi: "backend" });
    const bin = await a.join(`bin-${protocol}`);
    const gotBin: Message[] = [];
    bin.on("message", (m) => gotBin.push(m));
    await bin.publish(new Uint8Array([1, 2, 3]));
    await waitFor(() => gotBin.length === 1, { what: "binary message" });
    expect(gotBin[0]).toMatchObject({ binary: true, data: new Uint8Array([1, 2, 3]) });
  });
});

describe("recovery", () => {
  it("a cut connection reconnects, rejoins and recovers every missed message in order", async () => {
    const proxy = await new CutProxy(node.clientPort).listen();
    try {
      const room = "chat:recover";
      const states: State[] = [];
      const c = client("carol", {}, `ws://127.0.0.1:${proxy.port}/ws`);
      c.on("state", (s) => states.push(s.to));
      await c.connect();
      const got: Message[] = [];
      const joins: JoinInfo[] = [];
      await c.join(room, { onMessage: (m) => got.push(m), onJoin: (j) => joins.push(j) });
      await node.publish(room, { text: "m1" });
      await waitFor(() => got.length === 1, { what: "m1" });
      proxy.cut();
      await waitFor(() => c.state !== "connected", { what: "the cut to be noticed" });
      for (let i = 2; i <= 6; i++) await node.publish(room, { text: `m${i}` });
      proxy.restore();
      await waitFor(() => got.length === 6, { what: "recovered messages" });
      await node.publish(room, { text: "m7" });
      await waitFor(() => got.length === 7, { what: "live message" });
      expect(texts(got)).toEqual(["m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
      expect(got.map((m) => m.position.offset)).toEqual([1, 2, 3, 4, 5, 6, 7]);
      expect(joins.at(-1)).toMatchObject({ rejoin: true, recovered: true, missed: 5, gap: false });
      expect(states).toContain("disconnected");
    } finally {
      await proxy.close();
    }
  });

  it("after a node restart the client reconnects, and the lost history is reported as a gap", async () => {
    const room = "chat:restart";
    const c = client("dave");
    await c.connect();
    const joins: JoinInfo[] = [];
    const got: Message[] = [];
    await c.join(room, { onJoin: (j) => joins.push(j), onMessage: (m) => got.push(m) });
    await node.publish(room, { text: "before" });
    await waitFor(() => got.length === 1, { what: "message before restart" });
    const epoch = got[0].position.epoch;
    await node.restart();
    await waitFor(() => joins.length === 2, { what: "re-join after restart" });
    expect(joins[1]).toMatchObject({ rejoin: true, recoveryAsked: true, recovered: false, gap: true });
    expect(joins[1].position.epoch).not.toBe(epoch);
    await node.publish(room, { text: "after" });
    await waitFor(() => got.length === 2, { what: "message after restart" });
    expect(got[1].position).toEqual({ epoch: joins[1].position.epoch, offset: 1 });
  });

  it("a rejected token stops the client instead of reconnecting", async () => {
    const c = new Client(node.wsURL, { token: "not-a-jwt", WebSocket: WebSocket as never, logger: {} });
    clients.push(c);
    const err = await c.connect().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClosedError);
    expect(c.state).toBe("closed");
    const cause = (err as ClosedError).cause;
    expect(cause instanceof CloseError ? cause.code : (cause as { code?: number }).code).toBeDefined();
  });
});
