// A scripted roomcast server behind a fake WebSocket, for unit tests: it speaks the
// real wire format (JSON or protobuf frames) and keeps rooms with epochs, offsets and
// history, so that recovery can be exercised faithfully.
import { create, fromBinary, fromJson, toBinary, toJson, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import {
  ClientCommandSchema,
  ServerMessageSchema,
  type ClientCommand,
} from "../src/gen/roomcast/v1/client_pb.js";
import { RoomMessageSchema, type RoomMessage } from "../src/gen/roomcast/v1/common_pb.js";
import type { WebSocketLike } from "../src/client.js";

export type ServerInit = MessageInitShape<typeof ServerMessageSchema>;

export class FakeRoom {
  epoch = "e1";
  /** Earlier epochs the stream went on from (handOver). */
  past = new Set<string>();
  messages: RoomMessage[] = [];
  constructor(public name: string, public history = true) {}
  get offset(): number {
    return this.messages.length;
  }
  add(data: JsonValue): RoomMessage {
    const m = create(RoomMessageSchema, {
      room: this.name,
      epoch: this.epoch,
      offset: BigInt(this.messages.length + 1),
      payload: { kind: { case: "jsonText", value: JSON.stringify(data) } },
    });
    this.messages.push(m);
    return m;
  }
  /** Restarts the stream under a new epoch, losing history. */
  restart(epoch: string): void {
    this.epoch = epoch;
    this.past.clear();
    this.messages = [];
  }
  /** Starts a new epoch whose offsets go on, keeping history: the room moved between live owners. */
  handOver(epoch: string): void {
    this.past.add(this.epoch);
    this.epoch = epoch;
  }
  /** Reports whether a position of epoch is on the room's current stream. */
  onStream(epoch: string): boolean {
    return epoch === this.epoch || this.past.has(epoch);
  }
}

export class FakeServer {
  sockets: FakeWS[] = [];
  commands: ClientCommand[] = [];
  rooms = new Map<string, FakeRoom>();
  pingInterval = 0; // seconds
  expiresInSec = 0;
  /** Overrides the reply to a command; return undefined for the default behaviour, null for no reply. */
  override?: (cmd: ClientCommand, ws: FakeWS) => ServerInit | null | undefined;
  /** When false, new sockets never open (the node is down): they close with 1006. */
  up = true;
  /** When false, sockets stay in CONNECTING forever. */
  answerDials = true;

  room(name: string, history = true): FakeRoom {
    let r = this.rooms.get(name);
    if (!r) this.rooms.set(name, (r = new FakeRoom(name, history)));
    return r;
  }

  get last(): FakeWS {
    return this.sockets[this.sockets.length - 1];
  }

  live(): FakeWS | undefined {
    return this.sockets.find((s) => s.readyState === 1);
  }

  /** Publishes data to room and pushes it to every live socket that joined it. */
  publish(room: string, data: JsonValue): RoomMessage {
    const m = this.room(room).add(data);
    for (const ws of this.sockets) if (ws.readyState === 1 && ws.joined.has(room)) ws.push({ body: { case: "message", value: m } });
    return m;
  }

  of(kind: string): ClientCommand[] {
    return this.commands.filter((c) => c.command.case === kind);
  }

  /** The constructor to pass as options.WebSocket. */
  get WebSocket() {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const server = this;
    return class extends FakeWS {
      constructor(url: string, protocols: string[]) {
        super(server, url, protocols);
      }
    };
  }

  handle(ws: FakeWS, cmd: ClientCommand): void {
    this.commands.push(cmd);
    const o = this.override?.(cmd, ws);
    if (o === null) return;
    if (o !== undefined) return ws.push({ id: cmd.id, ...o });
    const c = cmd.command;
    switch (c.case) {
      case "connect":
        return ws.push({
          id: cmd.id,
          body: {
            case: "connect",
            value: {
              connection: `conn-${this.sockets.indexOf(ws) + 1}`,
              node: "n1",
              user: "alice",
              pingInterval: this.pingInterval ? { seconds: BigInt(this.pingInterval) } : undefined,
              expires: this.expiresInSec ? { seconds: BigInt(Math.floor(Date.now() / 1000) + this.expiresInSec) } : undefined,
            },
          },
        });
      case "join": {
        const r = this.room(c.value.room);
        ws.joined.add(r.name);
        const from = c.value.recoverFrom;
        let recovered = false;
        let messages: RoomMessage[] = [];
        if (from && r.history && r.onStream(from.epoch)) {
          recovered = true;
          messages = r.messages.slice(Number(from.offset));
        }
        return ws.push({
          id: cmd.id,
          body: {
            case: "join",
            value: { room: r.name, position: { epoch: r.epoch, offset: BigInt(r.offset) }, recoverable: r.history, recovered, messages },
          },
        });
      }
      case "leave":
        ws.joined.delete(c.value.room);
        return ws.push({ id: cmd.id, body: { case: "leave", value: {} } });
      case "publish": {
        const r = this.room(c.value.room);
        const p = c.value.payload!;
        const m = r.add(null);
        m.payload = p;
        for (const s of this.sockets) if (s.readyState === 1 && s.joined.has(r.name)) s.push({ body: { case: "message", value: m } });
        return ws.push({ id: cmd.id, body: { case: "publish", value: { position: { epoch: r.epoch, offset: m.offset } } } });
      }
      case "history": {
        const r = this.room(c.value.room);
        const since = c.value.since;
        if (since && since.epoch !== "" && !r.onStream(since.epoch)) {
          return ws.push({ id: cmd.id, error: { code: 101, message: "position of another epoch" } });
        }
        const after = since ? Number(since.offset) : 0;
        return ws.push({
          id: cmd.id,
          body: {
            case: "history",
            value: { messages: r.messages.filter((m) => Number(m.offset) > after), position: { epoch: r.epoch, offset: BigInt(r.offset) } },
          },
        });
      }
      case "refresh":
        return ws.push({
          id: cmd.id,
          body: { case: "refresh", value: { expires: { seconds: BigInt(Math.floor(Date.now() / 1000) + this.expiresInSec) } } },
        });
      case "pong":
        return;
      default:
        return ws.push({ id: cmd.id, error: { code: 102, message: "not faked" } });
    }
  }
}

export class FakeWS implements WebSocketLike {
  binaryType = "blob";
  protocol = "";
  readyState = 0;
  closedWith?: number;
  joined = new Set<string>();
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;

  constructor(
    readonly server: FakeServer,
    readonly url: string,
    readonly protocols: string[],
  ) {
    server.sockets.push(this);
    if (!server.answerDials) return;
    queueMicrotask(() => {
      if (this.readyState !== 0) return;
      if (!server.up) {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006, reason: "" });
        return;
      }
      this.readyState = 1;
      this.protocol = protocols[0];
      this.onopen?.({});
    });
  }

  get binary(): boolean {
    return this.protocol === "roomcast.v1.proto";
  }

  send(data: string | Uint8Array): void {
    if (this.readyState !== 1) throw new Error("not open");
    if (this.binary !== (typeof data !== "string")) throw new Error("frame type does not match the subprotocol");
    const cmd =
      typeof data === "string"
        ? fromJson(ClientCommandSchema, JSON.parse(data) as JsonValue)
        : fromBinary(ClientCommandSchema, data);
    // Reply asynchronously, like a real server.
    queueMicrotask(() => {
      if (this.readyState === 1) this.server.handle(this, cmd);
    });
  }

  close(code?: number): void {
    if (this.readyState >= 2) return;
    this.closedWith = code ?? 1005;
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code: code ?? 1005, reason: "" }));
  }

  /** Sends a server message to the client. */
  push(m: ServerInit): void {
    if (this.readyState !== 1) return;
    const msg = create(ServerMessageSchema, m);
    const data = this.binary ? toBinary(ServerMessageSchema, msg).buffer : JSON.stringify(toJson(ServerMessageSchema, msg));
    this.onmessage?.({ data });
  }

  /** The server closes the connection with code (1006: the network dropped). */
  drop(code = 1006, reason = ""): void {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}
