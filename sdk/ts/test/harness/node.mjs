// Runs a real roomcast node for tests: a `roomcast node --dev` process on free loopback
// ports, restartable on the same ports (a restarted standalone node starts a new epoch),
// plus helpers to mint tokens and publish through the CLI. Every wait polls a condition
// with a generous deadline; nothing sleeps for synchronisation.
import { spawn, execFile } from "node:child_process";
import { createServer } from "node:net";
import { createWriteStream } from "node:fs";
import { promisify } from "node:util";

const run = promisify(execFile);

/** The roomcast binary: $ROOMCAST_BIN, or /tmp/roomcast. */
export const binary = process.env.ROOMCAST_BIN || "/tmp/roomcast";

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Polls cond until it returns a truthy value or the deadline passes. */
export async function waitFor(cond, { timeout = 20_000, interval = 50, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export class RoomcastNode {
  constructor(opts = {}) {
    this.secret = "test-secret-0123456789abcdef0123456789abcdef";
    this.controlToken = "test-control-token";
    this.extraArgs = opts.args ?? [];
    this.logFile = opts.logFile;
    this.proc = undefined;
  }

  /** Starts the node on free ports and waits until it is ready. */
  async start() {
    if (!this.clientPort) {
      this.clientPort = await freePort();
      this.controlPort = await freePort();
      this.adminPort = await freePort();
    }
    const args = [
      "node", "--dev",
      "--client-addr", `127.0.0.1:${this.clientPort}`,
      "--control-addr", `127.0.0.1:${this.controlPort}`,
      "--admin-addr", `127.0.0.1:${this.adminPort}`,
      "--jwt-secret", this.secret,
      "--control-token", this.controlToken,
      "--drain-timeout", "2s",
      ...this.extraArgs,
    ];
    const proc = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    this.exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
    const log = this.logFile ? createWriteStream(this.logFile, { flags: "a" }) : undefined;
    proc.stdout.on("data", (d) => log?.write(d));
    proc.stderr.on("data", (d) => log?.write(d));
    let exited = false;
    this.exited.then(() => (exited = true));
    await waitFor(async () => {
      if (exited) throw new Error("node exited during start (see its log)");
      const r = await fetch(`http://127.0.0.1:${this.adminPort}/readyz`);
      return r.ok;
    }, { what: "node ready" });
    return this;
  }

  /** Stops the node (SIGTERM: it drains, closing clients with 4000) and waits for exit. */
  async stop() {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    p.kill("SIGTERM");
    const t = setTimeout(() => p.kill("SIGKILL"), 15_000);
    await this.exited;
    clearTimeout(t);
  }

  /** Stops the node and starts it again on the same ports: a new epoch, empty history. */
  async restart() {
    await this.stop();
    // The old process has exited, so its ports are free; retry briefly in case the OS
    // has not released them yet.
    await waitFor(() => this.start().then(() => true), { what: "node restart" });
  }

  get wsURL() {
    return `ws://127.0.0.1:${this.clientPort}/ws`;
  }

  get httpURL() {
    return `http://127.0.0.1:${this.clientPort}`;
  }

  async token(user) {
    const r = await fetch(`${this.httpURL}/dev/token?user=${encodeURIComponent(user)}`);
    if (!r.ok) throw new Error(`dev token: http ${r.status}`);
    return (await r.json()).token;
  }

  /** Runs a CLI verb against the node's control API; resolves with stdout. */
  async cli(...args) {
    const { stdout } = await run(binary, [...args, "--addr", `127.0.0.1:${this.controlPort}`, "--token", this.controlToken, "--output", "json"]);
    return stdout;
  }

  /** Publishes a JSON value to room from the backend. */
  async publish(room, value) {
    return JSON.parse(await this.cli("publish", room, JSON.stringify(value)));
  }
}
