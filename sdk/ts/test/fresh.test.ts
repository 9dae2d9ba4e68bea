// Checked-in generated files must match their sources: the TS wire types (src/gen, from
// ../../proto via buf + protoc-gen-es) and the demo bundle the Go binary embeds
// (internal/demo/dist, from demo/ and src/ via esbuild). Regenerate with
// `npm run generate` and `npm run build:demo`.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("..", import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), "roomcast-fresh-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function files(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.set(relative(dir, p), readFileSync(p, "utf8"));
    }
  };
  walk(dir);
  return out;
}

function expectSame(fresh: string, checkedIn: string, fix: string) {
  const want = files(fresh);
  const got = files(checkedIn);
  expect([...got.keys()].sort(), `file list differs: run ${fix}`).toEqual([...want.keys()].sort());
  for (const [name, text] of want) {
    expect(got.get(name) === text, `${name} is stale: run ${fix}`).toBe(true);
  }
}

describe("checked-in generated files", () => {
  it("src/gen matches the proto", () => {
    execFileSync(join(root, "node_modules/.bin/buf"), ["generate", "-o", tmp], { cwd: root, stdio: "pipe" });
    expectSame(join(tmp, "src/gen"), join(root, "src/gen"), "npm run generate");
  }, 60_000);

  it("internal/demo/dist matches the demo sources", () => {
    const out = join(tmp, "demo");
    execFileSync(process.execPath, [join(root, "scripts/build-demo.mjs"), out], { cwd: root, stdio: "pipe" });
    expectSame(out, join(root, "../../internal/demo/dist"), "npm run build:demo");
  }, 60_000);
});
