// Reports the SDK's size as an application would ship it: bundled with its runtime
// dependency (@bufbuild/protobuf), minified, gzipped at level 9.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";

const r = await build({
  entryPoints: [fileURLToPath(new URL("../src/index.ts", import.meta.url))],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  write: false,
  legalComments: "none",
});
const js = r.outputFiles[0].contents;
console.log(`@roomcast/client: ${js.length} bytes minified, ${gzipSync(js, { level: 9 }).length} bytes minified+gzipped (with @bufbuild/protobuf)`);
