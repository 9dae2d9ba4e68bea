// A TCP proxy in front of a node whose connections can be cut: cut() destroys every
// open connection abruptly (no close frame, like a dropped network) and refuses new ones
// until restore(). Used to cut one client's connection while others keep theirs.
import { createServer, connect } from "node:net";

export class CutProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.down = false;
    this.conns = new Set();
    this.accepted = 0;
    this.server = createServer((c) => this.accept(c));
  }

  async listen() {
    await new Promise((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = this.server.address().port;
    return this;
  }

  accept(c) {
    if (this.down) return c.destroy();
    this.accepted++;
    const up = connect(this.targetPort, "127.0.0.1");
    const pair = [c, up];
    this.conns.add(pair);
    const end = () => {
      c.destroy();
      up.destroy();
      this.conns.delete(pair);
    };
    c.on("error", end).on("close", end);
    up.on("error", end).on("close", end);
    c.pipe(up);
    up.pipe(c);
  }

  /** Drops every connection and refuses new ones. */
  cut() {
    this.down = true;
    for (const [c, up] of this.conns) {
      c.resetAndDestroy?.() ?? c.destroy();
      up.destroy();
    }
    this.conns.clear();
  }

  restore() {
    this.down = false;
  }

  get open() {
    return this.conns.size;
  }

  async close() {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}
