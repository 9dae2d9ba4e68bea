import type { RoomMessage } from "./gen/roomcast/v1/common_pb.js";
import { messageFromPB, type Data, type Message, type Position } from "./codec.js";
import { Emitter } from "./emitter.js";
import type { Client, PublishOptions, CommandOptions } from "./client.js";

/** JoinInfo reports one (re-)join of a room. */
export interface JoinInfo {
  /** The room. */
  room: string;
  /** The room's position at the join. */
  position: Position;
  /** True when the room keeps history, so a later re-join can recover missed messages. */
  recoverable: boolean;
  /**
   * False for the first join of a subscription, true for every join after a reconnect
   * and for every report of a gap in the live stream (`resync`).
   */
  rejoin: boolean;
  /**
   * True when the report is about a gap found in the live stream, not about a
   * reconnect. For a room that keeps history the client left and re-joined it,
   * recovering from the last position it delivered (for a membership the server made,
   * which the client may have no right to re-join, it read the room's history
   * instead); `recovered` says whether that worked. For a room without history no join
   * took place: the report only says that messages were missed before the message that
   * follows it, whose offset is `position.offset + 1`.
   */
  resync: boolean;
  /** True when the join asked to recover from a position. */
  recoveryAsked: boolean;
  /**
   * True when recovery was asked and every missed message follows (`missed` of them,
   * before live ones).
   */
  recovered: boolean;
  /** How many messages were recovered. */
  missed: number;
  /** True when the server made the join (token rooms, the backend). */
  server: boolean;
  /**
   * True when messages may have been missed before this join: a re-join (or a gap in
   * the live stream) that did not recover. The application should re-sync the room
   * from its own source of truth.
   */
  gap: boolean;
}

/** Events of a Subscription. */
export interface SubscriptionEvents {
  /** A message of the room, in offset order, without duplicates. */
  message: Message;
  /** After every (re-)join, before the messages that follow it. */
  join: JoinInfo;
  /** The subscription ended; the value says why. */
  end: Error;
}

/** The status of a subscription; internal. */
export type SubStatus = "pending" | "established" | "rejoining" | "ended";

/** Options of Client.join. */
export interface JoinOptions extends CommandOptions {
  /** Receives the room's messages; the same as sub.on("message", f), but from the very first. */
  onMessage?: (m: Message) => void;
  /** Called after every (re-)join; the same as sub.on("join", f), but from the very first. */
  onJoin?: (info: JoinInfo) => void;
  /** Makes the first join recover from pos, e.g. a position stored by an earlier session. */
  recoverFrom?: Position;
}

/**
 * Subscription is the client's membership of one room. It delivers the room's
 * messages in offset order and without duplicates, also across reconnects, and tells
 * after each re-join whether the missed messages were recovered. A gap in the live
 * stream is repaired by a re-join with recovery, or reported (see JoinInfo.resync).
 * Messages that arrive
 * while no "message" listener is attached are kept (up to 10,000) and delivered to
 * the first listener added.
 */
export class Subscription {
  /** @internal */ status: SubStatus = "pending";
  /** @internal */ pos: Position = { epoch: "", offset: 0 };
  /** @internal The epoch before pos's, when the stream went on across a handover. */ prevEpoch = "";
  /** @internal */ recoverable = false;
  /** @internal */ last?: JoinInfo;
  /** @internal */ early: RoomMessage[] = [];
  /** @internal */ err?: Error;
  /** @internal */ dups = 0;
  /** @internal */ gaps = 0;
  /** @internal */ held: Message[] = [];
  /** @internal */ readonly events: Emitter<SubscriptionEvents>;
  private readonly endedP: Promise<Error>;
  private resolveEnded!: (e: Error) => void;

  /** @internal */
  constructor(
    private readonly client: Client,
    /** The room's name. */
    readonly room: string,
    onError: (e: unknown) => void,
  ) {
    this.events = new Emitter(onError);
    this.endedP = new Promise((r) => (this.resolveEnded = r));
  }

  /** Adds a listener and returns a function that removes it. */
  on<K extends keyof SubscriptionEvents>(event: K, fn: (v: SubscriptionEvents[K]) => void): () => void {
    const off = this.events.on(event, fn);
    if (event === "message" && this.held.length > 0) {
      const held = this.held;
      this.held = [];
      for (const m of held) this.events.emit("message", m);
    }
    return off;
  }

  /** Removes a listener. */
  off<K extends keyof SubscriptionEvents>(event: K, fn: (v: SubscriptionEvents[K]) => void): void {
    this.events.off(event, fn);
  }

  /** The position of the last message received, or of the last join. */
  get position(): Position {
    return { ...this.pos };
  }

  /** The report of the latest (re-)join. */
  get lastJoin(): JoinInfo | undefined {
    return this.last;
  }

  /** Why the subscription ended, or undefined while it lasts. */
  get error(): Error | undefined {
    return this.err;
  }

  /** True once the subscription ended. */
  get ended(): boolean {
    return this.status === "ended";
  }

  /** Resolves with the reason when the subscription ends. */
  get done(): Promise<Error> {
    return this.endedP;
  }

  /** How many messages were dropped because they were already delivered. */
  get duplicates(): number {
    return this.dups;
  }

  /**
   * How many gaps were found in the live stream: each one made the subscription
   * re-join the room with recovery or, when it could not, report the gap (see
   * JoinInfo.resync).
   */
  get resyncs(): number {
    return this.gaps;
  }

  /** Publishes to the subscription's room. */
  publish(data: Data, opts?: PublishOptions): Promise<Position> {
    return this.client.publish(this.room, data, opts);
  }

  /**
   * Leaves the room and ends the subscription. While offline it only forgets the room
   * (the server holds no membership for a closed connection).
   */
  leave(opts?: CommandOptions): Promise<void> {
    return this.client.leaveSub(this, opts);
  }

  /**
   * @internal Says how m relates to the last message delivered. It must follow it:
   * its offset is the last offset plus one, in the same epoch or, when the room's
   * owner handed the room over, a new one. An older offset of the same epoch (or of
   * the epoch before a handover) is a duplicate; anything else is a gap.
   */
  follows(m: RoomMessage): "next" | "dup" | "gap" {
    const off = Number(m.offset);
    if (this.pos.epoch === "" && this.pos.offset === 0) return "next"; // nothing to compare with yet
    if ((m.epoch === this.pos.epoch || m.epoch === this.prevEpoch) && off <= this.pos.offset) return "dup";
    return off === this.pos.offset + 1 ? "next" : "gap";
  }

  /** @internal Delivers m and makes its position the last one. */
  deliver(m: RoomMessage): void {
    const off = Number(m.offset);
    if (m.epoch !== this.pos.epoch) {
      // After a handover the stream goes on and late messages of the old epoch are
      // duplicates; after any other change of epoch it is a new stream.
      this.prevEpoch = this.pos.epoch !== "" && off === this.pos.offset + 1 ? this.pos.epoch : "";
    }
    this.pos = { epoch: m.epoch, offset: off };
    const msg = messageFromPB(m);
    if (!this.events.has("message")) {
      if (this.held.length < 10_000) this.held.push(msg);
      return;
    }
    this.events.emit("message", msg);
  }

  /** @internal */
  end(err: Error): void {
    if (this.status === "ended") return;
    this.status = "ended";
    this.err = err;
    this.early = [];
    this.resolveEnded(err);
    this.events.emit("end", err);
  }

}
