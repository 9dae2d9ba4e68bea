// End-to-end tests of the demo chat in real headless Chromium against a real node:
// two pages chat and see each other's presence; one page's connection is cut while
// messages keep being published and it catches up in order; the node restarts and both
// pages reconnect, say honestly that history was lost, and re-sync.
//
// Run: node --test e2e/browser/ (after `npm ci` in sdk/ts and building the roomcast
// binary; $ROOMCAST_BIN, default /tmp/roomcast). Screenshots go to $ARTIFACTS_DIR
// (default sdk/ts/artifacts/browser).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { RoomcastNode, waitFor } from "../../sdk/ts/test/harness/node.mjs";
import { CutProxy } from "../../sdk/ts/test/harness/proxy.mjs";
import { DemoFront } from "./front.mjs";

// playwright-core is a dev dependency of the SDK package; one npm install serves both.
const { chromium } = createRequire(new URL("../../sdk/ts/package.json", import.meta.url))("playwright-core");

const artifacts = process.env.ARTIFACTS_DIR || fileURLToPath(new URL("../../sdk/ts/artifacts/browser/", import.meta.url));
mkdirSync(artifacts, { recursive: true });
const ROOM = "chat:e2e";
const T = 30_000; // generous deadline of every wait: a failure bound, never a delay

let node, front, browser, profile;
const pages = {}; // user -> { page, proxy }

async function shot(name) {
  for (const [user, { page }] of Object.entries(pages)) {
    if (!page.isClosed()) await page.screenshot({ path: join(artifacts, `${name}-${user}.png`), fullPage: true });
  }
}

/** Runs a test body; on failure it keeps screenshots of every page before failing. */
function step(name, body) {
  return it(name, async () => {
    try {
      await body();
    } catch (err) {
      await shot(`FAILED-${name.replace(/\W+/g, "-")}`).catch(() => {});
      throw err;
    }
  });
}

async function open(user) {
  const proxy = await new CutProxy(front ? front.port : node.clientPort).listen();
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.error(`[${user}] page error:`, e));
  await page.goto(`http://127.0.0.1:${proxy.port}/?user=${user}&rooms=${ROOM}`);
  pages[user] = { page, proxy, ctx };
  await badge(user, "connected");
  return page;
}

const badge = (user, state) =>
  pages[user].page.waitForSelector(`#state[data-state="${state}"]`, { timeout: T });

const notBadge = (user, state) =>
  pages[user].page.waitForFunction((s) => document.querySelector("#state").dataset.state !== s, state, { timeout: T, polling: 50 });

const texts = (user) => pages[user].page.$$eval("#messages li.msg .text", (els) => els.map((e) => e.textContent));
const presence = (user) => pages[user].page.$$eval("#presence li", (els) => els.map((e) => e.dataset.user));

async function waitPresence(user, want) {
  await pages[user].page.waitForFunction(
    (w) => [...document.querySelectorAll("#presence li")].map((e) => e.dataset.user).sort().join(",") === w,
    [...want].sort().join(","),
    { timeout: T, polling: 50 },
  );
}

async function waitText(user, text) {
  await pages[user].page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages li.msg .text")].some((e) => e.textContent === t),
    text,
    { timeout: T, polling: 50 },
  );
}

async function say(user, text) {
  const { page } = pages[user];
  await page.fill("#text", text);
  await page.press("#text", "Enter");
  await waitText(user, text);
}

before(async () => {
  node = await new RoomcastNode({ logFile: join(artifacts, "node.log") }).start();
  const home = await (await fetch(node.httpURL + "/")).text();
  if (!home.includes('name="roomcast-demo"')) {
    console.log("# the node does not serve the demo at / yet: serving internal/demo/dist in front of it");
    front = await new DemoFront(node.clientPort).listen();
  }
  profile = mkdtempSync(join(tmpdir(), "roomcast-chromium-"));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    env: { ...process.env, HOME: profile }, // a fresh, empty profile home
  });
});

after(async () => {
  await browser?.close();
  for (const { proxy } of Object.values(pages)) await proxy.close();
  await front?.close();
  await node?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

describe("demo chat in Chromium", () => {
  step("two pages chat and see each other's presence and typing", async () => {
    await open("alice");
    await open("bob");
    await waitPresence("alice", ["alice", "bob"]);
    await waitPresence("bob", ["alice", "bob"]);

    await pages.alice.page.type("#text", "hel"); // typing indicator on the other page
    await pages.bob.page.waitForFunction(() => document.querySelector("#typing").textContent.includes("alice is typing"), null, { timeout: T, polling: 50 });
    await pages.alice.page.fill("#text", "");

    await say("alice", "hello bob");
    await waitText("bob", "hello bob");
    await say("bob", "hi alice");
    await waitText("alice", "hi alice");
    assert.deepEqual(await texts("alice"), ["hello bob", "hi alice"]);
    assert.deepEqual(await texts("bob"), ["hello bob", "hi alice"]);

    // A third user comes and goes: both pages see it.
    await open("carol");
    await waitPresence("alice", ["alice", "bob", "carol"]);
    await waitPresence("bob", ["alice", "bob", "carol"]);
    assert.deepEqual(await texts("carol"), ["hello bob", "hi alice"], "a newcomer sees the recent history");
    await shot("1-chat");
    await pages.carol.ctx.close();
    await pages.carol.proxy.close();
    delete pages.carol;
    await waitPresence("alice", ["alice", "bob"]);
    await waitPresence("bob", ["alice", "bob"]);
  });

  step("a cut connection reconnects, rejoins and shows every missed message in order", async () => {
    pages.bob.proxy.cut();
    await notBadge("bob", "connected");
    await shot("2-cut");
    for (let i = 1; i <= 5; i++) await node.publish(ROOM, { text: `missed ${i}` });
    await say("alice", "also missed");
    pages.bob.proxy.restore();
    await badge("bob", "connected");
    await waitText("bob", "also missed");
    const want = ["hello bob", "hi alice", "missed 1", "missed 2", "missed 3", "missed 4", "missed 5", "also missed"];
    assert.deepEqual(await texts("alice"), want);
    assert.deepEqual(await texts("bob"), want, "bob shows every missed message, once, in order");
    const notice = await pages.bob.page.textContent("#messages .notice.ok");
    assert.match(notice, /6 missed messages recovered/);
    await waitPresence("alice", ["alice", "bob"]);
    await say("bob", "back again");
    await waitText("alice", "back again");
    await shot("2-recovered");
  });

  step("after a node restart both pages reconnect, report the lost history and re-sync", async () => {
    const before = await texts("alice");
    await node.restart();
    for (const u of ["alice", "bob"]) {
      await pages[u].page.waitForSelector("#messages .notice.gap", { timeout: T });
      await badge(u, "connected");
    }
    for (const u of ["alice", "bob"]) {
      const notice = await pages[u].page.textContent("#messages .notice.gap");
      assert.match(notice, /could not be recovered/);
      assert.deepEqual((await texts(u)).slice(0, before.length), before, "what was shown stays, above the notice");
    }
    await waitPresence("alice", ["alice", "bob"]);
    await waitPresence("bob", ["alice", "bob"]);
    await node.publish(ROOM, { text: "from the new epoch" });
    await say("alice", "still here");
    for (const u of ["alice", "bob"]) {
      await waitText(u, "still here");
      assert.deepEqual((await texts(u)).slice(before.length), ["from the new epoch", "still here"]);
    }
    await shot("3-restarted");
  });
});
