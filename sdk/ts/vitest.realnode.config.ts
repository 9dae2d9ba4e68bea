import { defineConfig } from "vitest/config";

// The package against a real node: `npm run test:node` (needs $ROOMCAST_BIN or /tmp/roomcast).
export default defineConfig({
  test: {
    include: ["test/realnode/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fileParallelism: false,
  },
});
