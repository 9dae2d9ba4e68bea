/**
 * @roomcast/client — the roomcast WebSocket client for browsers and Node.
 *
 * ```ts
 * import { Client } from "@roomcast/client";
 * const client = new Client("wss://rt.example.com/ws", { getToken: fetchToken });
 * client.on("state", (s) => console.log(s.to));
 * await client.connect();
 * const room = await client.join("chat:lobby", {
 *   onMessage: (m) => console.log(m.data),
 *   onJoin: (j) => { if (j.gap) resync(); },
 * });
 * await room.publish({ text: "hi" });
 * ```
 *
 * @packageDocumentation
 */
export {
  Client,
  CLIENT_NAME,
  type ClientEvents,
  type ClientOptions,
  type CommandOptions,
  type ConnInfo,
  type History,
  type HistoryOptions,
  type Logger,
  type PublishOptions,
  type State,
  type StateChange,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export { Subscription, type JoinInfo, type JoinOptions, type SubscriptionEvents } from "./subscription.js";
export {
  SUBPROTOCOL_JSON,
  SUBPROTOCOL_PROTO,
  type ClientInfo,
  type Data,
  type DirectMessage,
  type JsonValue,
  type Member,
  type Message,
  type Position,
} from "./codec.js";
export { backoffCeiling, backoffDelay, defaultBackoff, makeBackoff, type Backoff } from "./backoff.js";
export {
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
export { CloseCode, ErrorCode } from "./gen/roomcast/v1/common_pb.js";
