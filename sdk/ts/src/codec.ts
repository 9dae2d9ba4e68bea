import { create, fromBinary, fromJson, toBinary, toJson, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import {
  ClientCommandSchema,
  ServerMessageSchema,
  type ClientCommand,
  type ServerMessage,
} from "./gen/roomcast/v1/client_pb.js";
import {
  PayloadSchema,
  PositionSchema,
  type ClientInfo as PbClientInfo,
  type Member as PbMember,
  type Payload as PbPayload,
  type Position as PbPosition,
  type RoomMessage,
} from "./gen/roomcast/v1/common_pb.js";

export type { JsonValue };

/** Subprotocol of JSON text frames (the canonical protobuf JSON mapping); the default. */
export const SUBPROTOCOL_JSON = "roomcast.v1.json";
/** Subprotocol of binary protobuf frames. */
export const SUBPROTOCOL_PROTO = "roomcast.v1.proto";

/**
 * Position is a point in a room's stream. Positions of different epochs are not
 * comparable. Offsets are exact up to 2^53.
 */
export interface Position {
  /** Opaque stream identity; empty means "no position". */
  epoch: string;
  /** Offset of the last message at this position; 0 before the first message. */
  offset: number;
}

/** ClientInfo identifies the sender or subject of a message or event. */
export interface ClientInfo {
  /** User id; empty for messages published by a backend. */
  user: string;
  /** Connection id; empty for messages published by a backend. */
  connection: string;
  /** Public info from the token's `info` claim, when set. */
  info?: JsonValue;
}

/** Member is one user present in a room. */
export interface Member {
  /** User id. */
  user: string;
  /** The user's connections in the room, in join order. */
  connections: string[];
  /** Public info of the user's first connection in the room. */
  info?: JsonValue;
}

/** Data is application data: a JSON value, or bytes for binary payloads. */
export type Data = JsonValue | Uint8Array;

/** Message is one message of a room's stream. */
export interface Message {
  /** The room. */
  room: string;
  /** The message's position in the room's stream. */
  position: Position;
  /** The data: a JSON value, or a Uint8Array when binary is true. */
  data: Data;
  /** True when the payload is binary. */
  binary: boolean;
  /** The publisher, when a client published it. */
  publisher?: ClientInfo;
  /** When the room's owner accepted the message. */
  time?: Date;
}

/** DirectMessage is a message to this user or connection outside any room. */
export interface DirectMessage {
  /** The data: a JSON value, or a Uint8Array when binary is true. */
  data: Data;
  /** True when the payload is binary. */
  binary: boolean;
}

/** Encodes a command as a frame. */
export function encodeCommand(cmd: ClientCommand, binary: boolean): string | Uint8Array {
  return binary ? toBinary(ClientCommandSchema, cmd) : JSON.stringify(toJson(ClientCommandSchema, cmd));
}

/** Decodes a frame from the server: a string (JSON) or bytes (protobuf). */
export function decodeServerMessage(data: unknown): ServerMessage {
  if (typeof data === "string") {
    return fromJson(ServerMessageSchema, JSON.parse(data) as JsonValue, { ignoreUnknownFields: true });
  }
  let bytes: Uint8Array;
  if (data instanceof Uint8Array) bytes = data;
  else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  else throw new TypeError("roomcast: unsupported frame type");
  return fromBinary(ServerMessageSchema, bytes);
}

/** Builds the payload of data; JSON values travel as JSON text, validated by the server. */
export function payloadToPB(data: Data): PbPayload {
  if (data instanceof Uint8Array) return create(PayloadSchema, { kind: { case: "binary", value: data } });
  const text = JSON.stringify(data);
  if (text === undefined) throw new TypeError("roomcast: payload is not a JSON value");
  return create(PayloadSchema, { kind: { case: "jsonText", value: text } });
}

/** Reads a payload as data. */
export function payloadFromPB(p: PbPayload | undefined): { data: Data; binary: boolean } {
  switch (p?.kind.case) {
    case "binary":
      return { data: p.kind.value, binary: true };
    case "json":
      return { data: valueJSON(p.kind.value) ?? null, binary: false };
    case "jsonText":
      return { data: JSON.parse(p.kind.value) as JsonValue, binary: false };
  }
  return { data: null, binary: false };
}

function valueJSON(v: Value | undefined): JsonValue | undefined {
  return v === undefined ? undefined : toJson(ValueSchema, v);
}

export function posFromPB(p: PbPosition | undefined): Position {
  return { epoch: p?.epoch ?? "", offset: Number(p?.offset ?? 0n) };
}

export function posToPB(p: Position): PbPosition {
  return create(PositionSchema, { epoch: p.epoch, offset: BigInt(p.offset) });
}

export function infoFromPB(ci: PbClientInfo | undefined): ClientInfo {
  const out: ClientInfo = { user: ci?.user ?? "", connection: ci?.connection ?? "" };
  const info = valueJSON(ci?.info);
  if (info !== undefined) out.info = info;
  return out;
}

export function memberFromPB(m: PbMember): Member {
  const out: Member = { user: m.user, connections: [...m.connections] };
  const info = valueJSON(m.info);
  if (info !== undefined) out.info = info;
  return out;
}

export function messageFromPB(m: RoomMessage): Message {
  const msg: Message = {
    room: m.room,
    position: { epoch: m.epoch, offset: Number(m.offset) },
    ...payloadFromPB(m.payload),
  };
  if (m.publisher && (m.publisher.user || m.publisher.connection)) msg.publisher = infoFromPB(m.publisher);
  if (m.timeUnixMs !== 0n) msg.time = new Date(Number(m.timeUnixMs));
  return msg;
}
