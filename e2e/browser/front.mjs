// DemoFront serves the embedded demo's files (internal/demo/dist) and forwards every
// other request, WebSocket upgrades included, to a node. The browser tests use it only
// when the node does not serve the demo at "/" itself (the demo is mounted on the client
// port in development mode by cmd wiring; this keeps the tests usable either way).
import { createServer, request } from "node:http";
import { connect } from "node:net";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const dist = fileURLToPath(new URL("../../internal/demo/dist/", import.meta.url));
const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8" };

export class DemoFront {
  constructor(nodePort) {
    this.nodePort = nodePort;
    this.server = createServer((req, res) => this.serve(req, res));
    this.server.on("upgrade", (req, socket, head) => {
      const up = connect(this.nodePort, "127.0.0.1", () => {
        const lines = [`${req.method} ${req.url} HTTP/1.1`];
        for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
        up.write(lines.join("\r\n") + "\r\n\r\n");
        up.write(head);
        up.pipe(socket);
        socket.pipe(up);
      });
      const end = () => (socket.destroy(), up.destroy());
      up.on("error", end).on("close", end);
      socket.on("error", end).on("close", end);
    });
  }

  async listen() {
    await new Promise((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = this.server.address().port;
    return this;
  }

  async serve(req, res) {
    const path = new URL(req.url, "http://x").pathname;
    const file = path === "/" ? "index.html" : normalize(path).replace(/^\/+/, "");
    if (types[extname(file)] && !file.includes("..")) {
      try {
        const body = await readFile(join(dist, file));
        res.writeHead(200, { "Content-Type": types[extname(file)], "Cache-Control": "no-cache" });
        return res.end(body);
      } catch {
        // not a demo file: forward
      }
    }
    const fwd = request({ host: "127.0.0.1", port: this.nodePort, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    fwd.on("error", () => {
      res.writeHead(502);
      res.end("node unavailable");
    });
    req.pipe(fwd);
  }

  async close() {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}
