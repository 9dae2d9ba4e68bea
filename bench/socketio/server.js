// Socket.IO 4 + @socket.io/redis-adapter, speaking roomcast-bench's adapter protocol so
// the same scenarios run against it as against roomcast (see ../README.md).
//
//   clients:  Socket.IO over the WebSocket transport only, at /socket.io/.
//             emit("join", room, ack)  joins a room and acknowledges;
//             every publish arrives as the event "m" whose single argument is the
//             published JSON payload, unchanged.
//   publish:  WebSocket /bench/publish, mirroring roomcast's PublishStream: one text
//             frame {"id":N,"room":R,"data":PAYLOAD} per publish, acknowledged in order
//             with {"id":N} (or {"id":N,"error":"..."}).
//             POST /bench/publish {"room":R,"data":PAYLOAD}, mirroring unary Publish.
//   health:   GET /bench/health -> 200 once Redis is connected.
//
// Environment: PORT (default 3000), REDIS_URL (default redis://127.0.0.1:6379).
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const { WebSocketServer } = require("ws");

const port = Number(process.env.PORT || 3000);
const redisURL = process.env.REDIS_URL || "redis://127.0.0.1:6379";

let ready = false;
let io;

function publish(msg) {
  if (typeof msg.room !== "string" || msg.room === "") {
    throw new Error("room required");
  }
  io.to(msg.room).emit("m", msg.data);
}

const httpServer = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/bench/health") {
    res.writeHead(ready ? 200 : 503).end(ready ? "ok" : "starting");
    return;
  }
  if (req.method === "POST" && req.url === "/bench/publish") {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      try {
        publish(JSON.parse(Buffer.concat(chunks).toString("utf8")));
        res.writeHead(200, { "Content-Type": "application/json" }).end('{"ok":true}');
      } catch (e) {
        res.writeHead(400, { "Content-Type": "application/json" }).end(JSON.stringify({ error: String(e.message || e) }));
      }
    });
    return;
  }
  // Socket.IO handles its own paths; everything else is not found.
  if (!req.url.startsWith("/socket.io/")) {
    res.writeHead(404).end();
  }
});

// The publish stream: a plain WebSocket, so a publisher pays one frame per publish as
// it does on a gRPC stream.
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
wss.on("connection", (ws) => {
  ws.on("message", (data) => {
    let msg;
    try {
      msg = JSON.parse(data.toString("utf8"));
      publish(msg);
      ws.send('{"id":' + Number(msg.id) + "}");
    } catch (e) {
      ws.send(JSON.stringify({ id: msg && Number(msg.id), error: String(e.message || e) }));
    }
  });
});
httpServer.on("upgrade", (req, socket, head) => {
  if (req.url === "/bench/publish") {
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit("connection", ws, req));
  }
  // /socket.io/ upgrades are handled by engine.io's own listener.
});

async function main() {
  const pub = createClient({ url: redisURL });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("redis pub:", e.message));
  sub.on("error", (e) => console.error("redis sub:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);

  io = new Server(httpServer, {
    transports: ["websocket"],
    adapter: createAdapter(pub, sub),
    perMessageDeflate: false,
    destroyUpgrade: false, // leave /bench/publish upgrades to us
    pingInterval: 600000, // like roomcast's --ping-interval 10m in the bench: no ping traffic
    pingTimeout: 600000,
    maxHttpBufferSize: 64 * 1024,
    serveClient: false,
  });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      if (typeof room !== "string" || room === "") {
        if (typeof ack === "function") ack({ error: "room required" });
        return;
      }
      socket.join(room);
      if (typeof ack === "function") ack(true);
    });
  });

  httpServer.listen(port, "127.0.0.1", () => {
    ready = true;
    console.log(`socket.io bench server on 127.0.0.1:${port}, redis ${redisURL}`);
  });

  const stop = () => {
    io.close();
    httpServer.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
