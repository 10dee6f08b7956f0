import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Browser, Page } from "puppeteer-core";
import { createTestDatabase, type TestDatabase } from "../../devkit/db.ts";
import { type Running, startAgent, startManager } from "../../devkit/fleet.ts";
import { eventually, freePort } from "../../devkit/net.ts";
import { repoRoot, stopAll } from "../../devkit/proc.ts";
import type { ModelInfo, WorkerList } from "../../protocol/index.ts";
import { ADMIN, FLEET } from "../manager/helpers.ts";

/**
 * The console in a real browser: Debian's `chromium` (installed by .ci/run) driven by
 * puppeteer-core, against a manager process with two simulated agents. Skipped, saying so,
 * where no chromium binary exists. CONSOLE_SCREENSHOTS=docs/console writes the screenshots
 * of docs/console.md.
 */
const chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((path) =>
  existsSync(path),
);
const driver = (() => {
  try {
    return Bun.resolveSync("puppeteer-core", import.meta.dir);
  } catch {
    return undefined;
  }
})();
if (!chromium) {
  console.warn(
    "console-browser.test.ts skipped: no chromium binary (apt-get install -y chromium; .ci/run does)",
  );
} else if (!driver) {
  console.warn("console-browser.test.ts skipped: puppeteer-core is not installed (npm ci)");
}
const screenshots = process.env.CONSOLE_SCREENSHOTS;

describe.skipIf(!chromium || !driver)("fleet console in a browser", () => {
  let database: TestDatabase;
  let manager: Running;
  let browser: Browser;
  let page: Page;
  /** Every URL the page asked for, whatever the host. */
  const requested: string[] = [];

  const shot = async (name: string) => {
    if (!screenshots) return;
    const dir = join(repoRoot, screenshots);
    mkdirSync(dir, { recursive: true });
    await page.screenshot({ path: join(dir, `${name}.png`) as `${string}.png` });
  };
  const text = () => page.evaluate(() => document.body.textContent ?? "");
  const instancePid = async () => {
    const reply = await fetch(`${manager.url}/v1/models/chat`, {
      headers: { authorization: `Bearer ${ADMIN}` },
    });
    return ((await reply.json()) as ModelInfo).instances[0]?.pid;
  };

  beforeAll(async () => {
    database = await createTestDatabase();
    manager = await startManager({
      database,
      env: { ADMIN_TOKEN: ADMIN, FLEET_TOKEN: FLEET, HEARTBEAT_INTERVAL_S: "0.3" },
    });
    for (const id of ["gpu-a", "gpu-b"]) {
      await startAgent({
        managerUrl: manager.url,
        workerId: id,
        port: await freePort(),
        env: {
          FLEET_TOKEN: FLEET,
          SIM_GPUS: "2x NVIDIA H100 80GB HBM3:81559",
          // Long enough that the page shows the loading bar between two refreshes.
          SIM_STARTUP_DELAY_MS: "6000",
        },
      });
    }
    await eventually(
      async () => {
        const reply = await fetch(`${manager.url}/v1/workers`, {
          headers: { authorization: `Bearer ${ADMIN}` },
        });
        const { workers } = (await reply.json()) as WorkerList;
        return workers.filter((w) => w.status === "online" && w.management_path).length === 2;
      },
      { what: "two workers online and probed", timeoutMs: 30_000 },
    );
    const puppeteer = await import("puppeteer-core");
    browser = await puppeteer.launch({
      executablePath: chromium,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--no-pings",
        // Only loopback: no name of the outside world is ever looked up.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
      ],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 1200, height: 820 });
    page.on("request", (request) => {
      requested.push(request.url());
    });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await stopAll();
    await database?.destroy();
  });

  test("sign in, see both workers, register a model and watch it load to ready without a reload", async () => {
    await page.goto(`${manager.url}/`);
    expect(new URL(page.url()).pathname).toBe("/login");
    await shot("login");
    await page.type('input[name="token"]', ADMIN);
    await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
    expect(new URL(page.url()).pathname).toBe("/");
    const fleet = await text();
    expect(fleet).toContain("gpu-a");
    expect(fleet).toContain("gpu-b");
    expect(fleet).toContain("GPU 1");
    expect(fleet).toContain("reachable");
    if (screenshots) {
      await page.emulateMediaFeatures([{ name: "prefers-color-scheme", value: "dark" }]);
      await page.setViewport({ width: 390, height: 844 });
      await shot("fleet-phone-dark");
      await page.setViewport({ width: 1200, height: 820 });
      await page.emulateMediaFeatures([]);
    }

    await page.goto(`${manager.url}/models`);
    await page.type('input[name="alias"]', "chat");
    await page.type('input[name="model_name"]', "Qwen/Qwen2.5-0.5B-Instruct");
    await page.type('input[name="gpu_memory_utilization"]', "0.5");
    await Promise.all([
      page.waitForNavigation(),
      page.click('form[action="/models"] button[type="submit"]'),
    ]);
    expect(new URL(page.url()).pathname).toBe("/models");
    // A mark on this document: gone if the page were reloaded.
    await page.evaluate(() => {
      document.body.dataset.mark = "no-reload";
    });
    await page.waitForSelector('article[aria-label="model chat"] progress', { timeout: 30_000 });
    const loading = await page.$eval(
      'article[aria-label="model chat"] .progress',
      (node) => node.textContent ?? "",
    );
    expect(loading).toMatch(/elapsed · ETA/);
    await shot("models-loading");
    await page.waitForSelector('article[aria-label="model chat"] h3 .s-ready', {
      timeout: 60_000,
    });
    expect(await page.evaluate(() => document.body.dataset.mark)).toBe("no-reload");
    await shot("models");
    await page.goto(`${manager.url}/`);
    await shot("fleet");

    await page.goto(`${manager.url}/routes`);
    const routes = await text();
    expect(routes).toContain("chat");
    expect(routes).toContain("Qwen/Qwen2.5-0.5B-Instruct");
    expect(routes).toMatch(/internal\s*prefix affinity\s*ready/);
    await shot("routes");

    await page.goto(`${manager.url}/events?model=chat`);
    expect(await text()).toContain("instance.ready");
    await shot("events");

    await page.goto(`${manager.url}/keys`);
    await page.type('input[name="name"]', "team-a");
    await Promise.all([page.waitForNavigation(), page.click('form[action="/keys"] button')]);
    const key = (await page.$eval("#new-key", (node) => node.textContent)) ?? "";
    expect(key).toStartWith("sk-fleet-");
    await shot("keys");

    // Chat traffic with that key; the Traffic page, open before it, shows it without a reload.
    await page.goto(`${manager.url}/traffic`);
    await page.evaluate(() => {
      document.body.dataset.mark = "no-reload";
    });
    for (let i = 0; i < 5; i++) {
      const reply = await fetch(`${manager.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: "chat",
          max_tokens: 8,
          messages: [{ role: "user", content: `hello number ${i}` }],
        }),
      });
      expect(reply.status).toBe(200);
      await reply.text();
    }
    await page.waitForFunction(
      () =>
        document.querySelector('tr[data-alias="chat"] .requests')?.textContent === "5" &&
        document.querySelector('tr[data-key="team-a"] .requests')?.textContent === "5",
      { timeout: 30_000 },
    );
    expect(await page.$$eval('tr[data-alias="chat"] rect.bar', (bars) => bars.length)).toBe(1);
    expect(await page.evaluate(() => document.body.dataset.mark)).toBe("no-reload");
    await shot("traffic");

    // Restart the instance from the keyboard: its row's button, Enter. The page that answers
    // says so; the bar shows the engine loading again and reaches ready without a reload.
    await page.goto(`${manager.url}/models`);
    const pidBefore = await instancePid();
    await page.focus('article[aria-label="model chat"] button[aria-label^="Restart chat on "]');
    await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
    expect(new URL(page.url()).searchParams.get("restarted")).not.toBeNull();
    expect(await page.$eval('p[role="status"]', (node) => node.textContent ?? "")).toContain(
      "Restarting chat on ",
    );
    await page.evaluate(() => {
      document.body.dataset.mark = "no-reload";
    });
    await page.waitForSelector('article[aria-label="model chat"] progress', { timeout: 30_000 });
    await shot("models-restarting");
    await page.waitForSelector('article[aria-label="model chat"] h3 .s-ready', {
      timeout: 60_000,
    });
    expect(await page.evaluate(() => document.body.dataset.mark)).toBe("no-reload");
    expect(await text()).toMatch(/ready\s*1 restart(?!s)/);
    expect(await instancePid()).not.toBe(pidBefore);

    // Revoke the key and delete the model through their buttons.
    await page.goto(`${manager.url}/keys`);
    expect(await page.$eval('tr[data-key="team-a"] .requests', (node) => node.textContent)).toBe(
      "5",
    );
    await Promise.all([page.waitForNavigation(), page.click('button[aria-label="Revoke team-a"]')]);
    expect(await text()).toContain("revoked");
    await page.goto(`${manager.url}/models`);
    await Promise.all([page.waitForNavigation(), page.click('button[aria-label="Delete chat"]')]);
    expect(await page.$('article[aria-label="model chat"]')).toBeNull();
    const gone = await fetch(`${manager.url}/v1/models/chat`, {
      headers: { authorization: `Bearer ${ADMIN}` },
    });
    expect(gone.status).toBe(404);
  }, 180_000);

  test("the page asked nothing of any host but the manager", () => {
    expect(requested.length).toBeGreaterThan(10);
    const elsewhere = requested.filter((url) => new URL(url).origin !== manager.url);
    expect(elsewhere).toEqual([]);
  });
});
