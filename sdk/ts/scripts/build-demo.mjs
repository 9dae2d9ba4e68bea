// Builds the demo into internal/demo/dist, the files the Go binary embeds. The output is
// checked in, so `go build` never needs npm; `npm run check-demo` fails when it is stale.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const out = process.argv[2] ?? here("../../../internal/demo/dist");
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: [here("../demo/main.ts")],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  legalComments: "none",
  outfile: `${out}/app.js`,
  logLevel: "warning",
});
await copyFile(here("../demo/index.html"), `${out}/index.html`);
await copyFile(here("../demo/style.css"), `${out}/style.css`);
console.log(`demo built into ${out}`);
