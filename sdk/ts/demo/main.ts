// The roomcast demo chat: the living example of the TypeScript SDK. The node serves it
// in development mode at "/" and hands out tokens at /dev/token (development only: a
// real app gets its token from its own backend).
//
// What it shows: rooms, a live presence list, typing indicators, a connection-state
// badge, and honest recovery — after a reconnect the missed messages appear in order,
// and when the room's history did not survive (a restarted node starts a new epoch) a
// notice says so and the room is re-synced from the server's history.
import { Client, type JoinInfo, type Message, type Position, type Subscription } from "../src/index.js";

const $ = <T extends HTMLElement>(sel: string) => document.querySelector(sel) as T;
const params = new URLSearchParams(location.search);
const user = params.get("user") || localStorage.getItem("roomcast-demo-user") || `guest-${Math.floor(Math.random() * 9000 + 1000)}`;
localStorage.setItem("roomcast-demo-user", user);
const TYPING_MS = 3000;

const client = new Client(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`, {
  // Fetched again before every connect and before the token expires.
  getToken: async () => {
    const res = await fetch(`/dev/token?user=${encodeURIComponent(user)}`, { cache: "no-store" });
    if (!res.ok) throw new Error(`token endpoint: http ${res.status}`);
    return ((await res.json()) as { token: string }).token;
  },
  protocol: params.get("protocol") === "protobuf" ? "protobuf" : "json",
  backoff: { min: 300, max: 5000 }, // a demo should come back quickly
});

interface RoomView {
  name: string;
  sub?: Subscription;
  list: HTMLOListElement; // the room's messages (shown when active)
  seen: Set<string>; // "epoch/offset" of rendered messages
  members: Map<string, string>; // user -> display name
  typing: Map<string, ReturnType<typeof setTimeout>>;
  lastTyping: number;
}

const rooms = new Map<string, RoomView>();
let active = "";

function setBadge(state: string) {
  const b = $("#state");
  b.dataset.state = state;
  b.textContent = state;
}
client.on("state", (s) => {
  setBadge(s.to);
  if (s.to === "connected" && client.info) $("#me").textContent = `${user} · ${client.info.node}`;
  if (s.to === "closed") notice(active, `connection closed for good: ${s.error?.message ?? "closed"}`);
});

function nameOf(info: unknown, fallback: string): string {
  const n = (info as { name?: unknown } | undefined)?.name;
  return typeof n === "string" && n ? n : fallback;
}

function el(tag: string, cls: string, text: string): HTMLElement {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  e.textContent = text;
  return e;
}

function messageEl(m: Message): HTMLElement {
  const li = el("li", "msg", "");
  li.dataset.epoch = m.position.epoch;
  li.dataset.offset = String(m.position.offset);
  const d = m.data as { text?: unknown };
  li.append(el("span", "who", nameOf(m.publisher?.info, m.publisher?.user ?? "backend")));
  li.append(el("span", "text", typeof d?.text === "string" ? d.text : JSON.stringify(m.data)));
  return li;
}

/** Renders a message once; before `before` (history) or at the end (live). */
function render(v: RoomView, m: Message, before?: Node | null) {
  const key = `${m.position.epoch}/${m.position.offset}`;
  if (v.seen.has(key)) return;
  v.seen.add(key);
  v.list.insertBefore(messageEl(m), before ?? null);
  if (v.name === active && !before) v.list.scrollTop = v.list.scrollHeight;
}

function notice(room: string, text: string, kind = "gap") {
  const v = rooms.get(room);
  if (!v) return;
  const li = el("li", `notice ${kind}`, text);
  v.list.append(li);
  return li;
}

/** Loads the room's retained messages up to pos and inserts them before anchor. */
async function backfill(v: RoomView, pos: Position, anchor: Node | null) {
  try {
    const h = await client.history(v.name, { limit: 50, reverse: true });
    for (const m of h.messages.reverse()) {
      if (m.position.epoch === pos.epoch && m.position.offset <= pos.offset) render(v, m, anchor);
    }
  } catch {
    // the namespace keeps no history, or we are offline again: nothing to show
  }
}

async function refreshPresence(v: RoomView) {
  try {
    const members = await client.presence(v.name);
    v.members = new Map(members.map((m) => [m.user, nameOf(m.info, m.user)]));
  } catch {
    v.members.clear(); // no presence in this namespace
  }
  renderPresence();
}

function renderPresence() {
  const v = rooms.get(active);
  const ul = $("#presence");
  ul.replaceChildren();
  if (!v) return;
  for (const [id, name] of [...v.members].sort()) {
    const li = el("li", "member", name);
    li.dataset.user = id;
    if (v.typing.has(id)) li.append(el("span", "typing", " typing…"));
    ul.append(li);
  }
  const typing = [...v.typing.keys()].filter((u) => u !== user).map((u) => v.members.get(u) ?? u);
  $("#typing").textContent = typing.length ? `${typing.join(", ")} ${typing.length > 1 ? "are" : "is"} typing…` : "";
}

function onJoin(v: RoomView, j: JoinInfo) {
  if (j.gap) {
    // Honest: messages may have been missed. Say so, and re-sync from the server.
    const n = notice(v.name, j.recoveryAsked
      ? "⚠ the missed messages could not be recovered (the room's history did not survive) — re-synced from the server"
      : j.resync
        ? "⚠ messages were missed in the live stream and this room keeps no history"
        : "⚠ reconnected without history for this room — messages may have been missed");
    void backfill(v, j.position, n?.nextSibling ?? null);
  } else if (j.rejoin && j.missed > 0) {
    const s = j.missed > 1 ? "s" : "";
    notice(v.name, j.resync ? `gap in the live stream: ${j.missed} missed message${s} recovered` : `reconnected: ${j.missed} missed message${s} recovered`, "ok");
  } else if (!j.rejoin) {
    void backfill(v, j.position, v.list.firstChild);
  }
  void refreshPresence(v);
}

// Typing indicators travel on a companion room without history, in the plain namespace.
const typingRoom = (room: string) => `typing.${room.replace(/:/g, ".")}`;

async function openRoom(name: string) {
  if (!rooms.has(name)) {
    const list = document.createElement("ol");
    list.id = "messages";
    list.dataset.room = name;
    const v: RoomView = { name, list, seen: new Set(), members: new Map(), typing: new Map(), lastTyping: 0 };
    rooms.set(name, v);
    const li = el("li", "", name);
    li.dataset.room = name;
    li.onclick = () => show(name);
    $("#rooms").append(li);
    v.sub = await client.join(name, { onMessage: (m) => render(v, m), onJoin: (j) => onJoin(v, j) }).catch((e: Error) => {
      notice(name, `cannot join: ${e.message}`);
      return undefined;
    });
    await client.join(typingRoom(name), {
      onMessage: (m) => {
        const who = (m.data as { user?: string }).user;
        if (!who || who === user) return;
        clearTimeout(v.typing.get(who));
        v.typing.set(who, setTimeout(() => (v.typing.delete(who), renderPresence()), TYPING_MS));
        renderPresence();
      },
    }).catch(() => undefined);
  }
  show(name);
}

function show(name: string) {
  active = name;
  const v = rooms.get(name)!;
  $("#messages").replaceWith(v.list);
  $("#room-title").textContent = name;
  for (const li of $("#rooms").children) li.classList.toggle("active", (li as HTMLElement).dataset.room === name);
  renderPresence();
  v.list.scrollTop = v.list.scrollHeight;
}

client.on("memberJoined", ({ room, member }) => {
  const v = rooms.get(room);
  if (!v) return;
  v.members.set(member.user, nameOf(member.info, member.user));
  if (room === active) renderPresence();
});
client.on("memberLeft", ({ room, member }) => {
  const v = rooms.get(room);
  if (!v) return;
  v.members.delete(member.user);
  if (room === active) renderPresence();
});

$("#composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $<HTMLInputElement>("#text");
  const text = input.value.trim();
  if (!text || !active) return;
  input.value = "";
  client.publish(active, { text }).catch((err: Error) => notice(active, `not sent: ${err.message}`));
});
$("#text").addEventListener("input", () => {
  const v = rooms.get(active);
  if (!v || client.state !== "connected" || Date.now() - v.lastTyping < 1000) return;
  v.lastTyping = Date.now();
  client.publish(typingRoom(active), { user }).catch(() => {});
});
$("#add-room").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $<HTMLInputElement>("#room-name");
  const name = input.value.trim();
  input.value = "";
  if (name) void openRoom(name.includes(":") ? name : `chat:${name}`);
});

// For the browser tests and the curious: the client is on window.
(window as unknown as { roomcast: unknown }).roomcast = { client, rooms };

void client.connect().catch(() => {});
const initial = (params.get("rooms") ?? "chat:lobby,chat:random").split(",").filter(Boolean);
void (async () => {
  for (const r of initial) await openRoom(r);
  show(params.get("room") ?? initial[0]);
})();
