// Gaps in a live room stream: repaired by a re-join with recovery (or a history read
// for a membership the server made), or reported; never silent.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Client, type JoinInfo, type Subscription } from "../src/index.js";
import type { ClientCommand } from "../src/gen/roomcast/v1/client_pb.js";
import { FakeServer } from "./fake.js";

const tick = () => vi.advanceTimersByTimeAsync(0);

let server: FakeServer;
let clients: Client[];

beforeEach(() => {
  vi.useFakeTimers();
  server = new FakeServer();
  clients = [];
});

afterEach(async () => {
  for (const c of clients) await c.close();
  expect(vi.getTimerCount()).toBe(0);
  vi.useRealTimers();
});

async function connected(): Promise<Client> {
  const c = new Client("ws://fake/ws", { token: "tok", WebSocket: server.WebSocket, random: () => 0.5, logger: {} });
  clients.push(c);
  const p = c.connect();
  await tick();
  await p;
  return c;
}

/** Joins room and records, in delivery order, "join" reports and message positions. */
async function joinLogged(c: Client, room: string): Promise<{ sub: Subscription; events: string[]; joins: JoinInfo[] }> {
  const events: string[] = [];
  const joins: JoinInfo[] = [];
  const sub = await c.join(room, {
    onJoin: (j) => {
      joins.push(j);
      events.push("join");
    },
    onMessage: (m) => events.push(`${m.position.epoch}/${m.position.offset}`),
  });
  return { sub, events, joins };
}

function push(room: string, epoch: string, offset: number) {
  const m = server.room(room).messages.find((x) => x.epoch === epoch && Number(x.offset) === offset);
  const value = m ?? { room, epoch, offset: BigInt(offset), payload: { kind: { case: "jsonText" as const, value: "0" } } };
  server.last.push({ body: { case: "message", value } });
}

/** The leave and join commands the server received, from the index from. */
function leavesAndJoins(from = 0): string[] {
  return server.commands
    .slice(from)
    .map((c) => c.command.case as string)
    .filter((k) => k === "leave" || k === "join");
}

describe("gap in a live stream", () => {
  it("re-joins once with recovery from the last offset delivered; recovered first, no duplicates", async () => {
    const c = await connected();
    const { sub, events, joins } = await joinLogged(c, "chat:g");
    server.publish("chat:g", 1);
    server.publish("chat:g", 2);
    const seen = server.commands.length;
    for (let i = 0; i < 3; i++) server.room("chat:g").add("lost"); // 3 to 5 never reach the client
    let held: ClientCommand | undefined;
    server.override = (cmd) => {
      if (cmd.command.case !== "join") return undefined;
      held = cmd;
      return null; // answered below, after pushes that race ahead of the reply
    };
    server.publish("chat:g", 6); // a jump from 2
    await tick();
    expect(leavesAndJoins(seen)).toEqual(["leave", "join"]);
    expect(held!.command.value).toMatchObject({ room: "chat:g", recoverFrom: { epoch: "e1", offset: 2n } });
    server.room("chat:g").add(7); // not pushed: the fake saw the leave
    push("chat:g", "e1", 6);
    push("chat:g", "e1", 7);
    server.override = undefined;
    server.handle(server.last, held!); // the re-join's reply
    server.publish("chat:g", 8);
    await tick();
    expect(events).toEqual(["join", "e1/1", "e1/2", "join", "e1/3", "e1/4", "e1/5", "e1/6", "e1/7", "e1/8"]);
    expect(leavesAndJoins(seen)).toEqual(["leave", "join", "join"]); // the last is the reply handled above
    expect(joins[1]).toMatchObject({ rejoin: true, resync: true, recoveryAsked: true, recovered: true, missed: 5, gap: false, server: false });
    expect(sub.resyncs).toBe(1);
    expect(sub.duplicates).toBe(3);
    expect(sub.position).toEqual({ epoch: "e1", offset: 8 });
  });

  it("does not re-sync a handover whose offsets go on; a late message of the old epoch is a duplicate", async () => {
    const c = await connected();
    const { sub, events } = await joinLogged(c, "chat:h");
    server.publish("chat:h", 1);
    server.publish("chat:h", 2);
    const seen = server.commands.length;
    push("chat:h", "e2", 3); // the handover
    push("chat:h", "e1", 2); // late, from the old owner
    push("chat:h", "e2", 4);
    await tick();
    expect(events).toEqual(["join", "e1/1", "e1/2", "e2/3", "e2/4"]);
    expect(leavesAndJoins(seen)).toEqual([]);
    expect(sub.resyncs).toBe(0);
    expect(sub.duplicates).toBe(1);
  });

  it("recovers across a handover from a position of the old epoch", async () => {
    const c = await connected();
    const { sub, events, joins } = await joinLogged(c, "chat:m");
    server.publish("chat:m", 1);
    server.publish("chat:m", 2);
    server.room("chat:m").add("lost"); // e1/3, dropped as stale after the move
    server.room("chat:m").handOver("e2");
    server.publish("chat:m", 4); // e2/4: a jump from e1/2
    await tick();
    push("chat:m", "e1", 3); // the old owner's late delivery
    server.publish("chat:m", 5);
    expect(events).toEqual(["join", "e1/1", "e1/2", "join", "e1/3", "e2/4", "e2/5"]);
    expect(server.of("join")[1].command.value).toMatchObject({ recoverFrom: { epoch: "e1", offset: 2n } });
    expect(joins[1]).toMatchObject({ resync: true, recovered: true, missed: 2, gap: false });
    expect(sub.resyncs).toBe(1);
    expect(sub.duplicates).toBe(2);
  });

  it("reports recovered=false when a new epoch starts again (the owner crashed)", async () => {
    const c = await connected();
    const { events, joins } = await joinLogged(c, "chat:x");
    server.publish("chat:x", 1);
    server.publish("chat:x", 2);
    server.room("chat:x").restart("e2");
    server.publish("chat:x", "new"); // e2/1
    await tick();
    server.publish("chat:x", "next");
    expect(server.of("join")[1].command.value).toMatchObject({ recoverFrom: { epoch: "e1", offset: 2n } });
    expect(events).toEqual(["join", "e1/1", "e1/2", "join", "e2/2"]);
    expect(joins[1]).toMatchObject({ rejoin: true, resync: true, recoveryAsked: true, recovered: false, gap: true, position: { epoch: "e2", offset: 1 } });
  });

  it("in a room without history, delivers the message after a report of the gap", async () => {
    const c = await connected();
    server.room("live:n", false);
    const { sub, events, joins } = await joinLogged(c, "live:n");
    server.publish("live:n", 1);
    server.room("live:n").add("lost");
    const seen = server.commands.length;
    server.publish("live:n", 3);
    server.publish("live:n", 4);
    await tick();
    expect(events).toEqual(["join", "e1/1", "join", "e1/3", "e1/4"]);
    expect(leavesAndJoins(seen)).toEqual([]);
    expect(joins[1]).toMatchObject({ rejoin: true, resync: true, recoveryAsked: false, recovered: false, gap: true, recoverable: false, position: { epoch: "e1", offset: 2 } });
    expect(sub.lastJoin).toBe(joins[1]);
    expect(sub.resyncs).toBe(1);
  });

  it("reads history, not leave and join, for a membership the server made", async () => {
    const c = await connected();
    const events: string[] = [];
    c.on("serverJoin", (s) => {
      s.on("join", () => events.push("join"));
      s.on("message", (m) => events.push(`${m.position.epoch}/${m.position.offset}`));
    });
    const ws = server.last;
    ws.joined.add("news");
    ws.push({ body: { case: "joined", value: { join: { room: "news", position: { epoch: "e1", offset: 0n }, recoverable: true } } } });
    server.publish("news", 1);
    server.room("news").add("lost");
    const seen = server.commands.length;
    server.publish("news", 3);
    await tick();
    server.publish("news", 4);
    expect(server.commands.slice(seen).map((x) => x.command.case)).toEqual(["history"]);
    expect(server.of("history")[0].command.value).toMatchObject({ room: "news", since: { epoch: "e1", offset: 1n } });
    expect(events).toEqual(["join", "e1/1", "join", "e1/2", "e1/3", "e1/4"]);
    const sub = c.subscription("news")!;
    expect(sub.lastJoin).toMatchObject({ resync: true, rejoin: true, recovered: true, missed: 2, gap: false, server: true });
  });

  it("for a membership the server made, reports the gap when the history cannot go on", async () => {
    const c = await connected();
    const ws = server.last;
    ws.joined.add("news");
    ws.push({ body: { case: "joined", value: { join: { room: "news", position: { epoch: "e1", offset: 0n }, recoverable: true } } } });
    const sub = c.subscription("news")!;
    const got: string[] = [];
    sub.on("message", (m) => got.push(`${m.position.epoch}/${m.position.offset}`));
    server.publish("news", 1);
    server.room("news").restart("e2");
    server.publish("news", "new");
    await tick();
    expect(got).toEqual(["e1/1", "e2/1"]);
    expect(sub.lastJoin).toMatchObject({ resync: true, recovered: false, gap: true, position: { epoch: "e2", offset: 0 } });
  });

  it("a re-sync cut short by a reconnect is finished by the reconnect's re-join", async () => {
    const c = await connected();
    const { sub, events, joins } = await joinLogged(c, "chat:i");
    server.publish("chat:i", 1);
    server.room("chat:i").add("lost");
    server.override = (cmd) => (cmd.command.case === "join" ? null : undefined);
    server.publish("chat:i", 3);
    await tick();
    server.override = undefined;
    server.last.drop(1006);
    await vi.advanceTimersByTimeAsync(1000);
    expect(c.state).toBe("connected");
    expect(server.of("join")[2].command.value).toMatchObject({ recoverFrom: { epoch: "e1", offset: 1n } });
    expect(events).toEqual(["join", "e1/1", "join", "e1/2", "e1/3"]);
    expect(joins[1]).toMatchObject({ rejoin: true, resync: false, recovered: true, missed: 2 });
    expect(sub.resyncs).toBe(1);
  });
});
