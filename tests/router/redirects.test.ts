import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "bun";
import { Miniflare } from "miniflare";
import { type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { bunBin, repoRoot, stopAll } from "../../devkit/proc.ts";
import type { ApiKeyCreated } from "../../protocol/index.ts";
import {
  addReplicas,
  createRouterCredential,
  type ServedManager,
  type Sim,
  serveManager,
  startRouter,
  startSim,
} from "./fixtures.ts";

/**
 * A worker whose /proxy answers with a redirect to another listener: no router follows it
 * (the prompt and the worker's credential would go to wherever the redirect points), the
 * attempt counts as failed, and the client gets another replica's answer or a 502. On Bun
 * (the router's HTTP/1.1 client, and Bun's fetch), Node (undici) and workerd (Miniflare).
 */

const runtimes = ["bun", "bun-fetch", "node", "workerd"] as const;

let db: OpenTestDb;
let sim: Sim;
let buildDir: string;
let manager: ServedManager;
let apiKey: string;
let recorder: Server<undefined>;
let redirector: Server<undefined>;
/** Requests that reached the listener the redirects point at: must stay empty. */
const followed: string[] = [];
/** Requests the redirecting worker answered. */
let bounced = 0;
const miniflares: Miniflare[] = [];

beforeAll(async () => {
  buildDir = mkdtempSync(join(tmpdir(), "router-redirects-"));
  const build = Bun.spawn(
    [
      bunBin,
      "build",
      "router/worker.ts",
      "--target=browser",
      "--format=esm",
      "--outfile",
      join(buildDir, "worker.js"),
    ],
    { cwd: repoRoot, stdout: "pipe", stderr: "pipe" },
  );
  recorder = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      followed.push(`${request.method} ${new URL(request.url).pathname} ${await request.text()}`);
      return Response.json({ stolen: true });
    },
  });
  redirector = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(request) {
      bounced++;
      const path = new URL(request.url).pathname;
      // 307 keeps the method and the body: a client that follows it re-sends the prompt.
      return new Response(null, {
        status: 307,
        headers: { location: `http://127.0.0.1:${recorder.port}${path}` },
      });
    },
  });
  sim = await startSim({ names: ["qwen"] });
  db = await openFreshDb();
  manager = await serveManager(db);
  const redirecting = `http://127.0.0.1:${redirector.port}`;
  // One alias whose only replica redirects, one with a redirecting and a working replica.
  await addReplicas(manager, "bounce", [{ workerId: "bounce-1", url: redirecting }]);
  await addReplicas(manager, "qwen", [
    { workerId: "qwen-redirects", url: redirecting },
    { workerId: "qwen-works", url: sim.url },
  ]);
  const key = await manager.json<ApiKeyCreated>("POST", "/v1/keys", {
    body: { name: "redirects" },
  });
  apiKey = key.body.key;
  expect(await build.exited).toBe(0);
});

afterAll(async () => {
  await Promise.all(miniflares.map((mf) => mf.dispose()));
  await stopAll();
  await manager?.close();
  recorder?.stop(true);
  redirector?.stop(true);
  await db?.destroy();
  rmSync(buildDir, { recursive: true, force: true });
});

async function startRuntime(runtime: (typeof runtimes)[number]): Promise<string> {
  // Ejection would hide the redirecting replica after three failures; keep it in play.
  const extra = { EJECT_AFTER_FAILURES: "1000" };
  if (runtime === "bun") return (await startRouter("bun", manager.url, extra)).url;
  if (runtime === "node") return (await startRouter("node", manager.url, extra)).url;
  if (runtime === "bun-fetch") {
    const env = { ...extra, UPSTREAM_CLIENT: "fetch", BUN_CONFIG_MAX_HTTP_REQUESTS: "1024" };
    return (await startRouter("bun", manager.url, env)).url;
  }
  const mf = new Miniflare({
    modules: [
      {
        type: "ESModule",
        path: "worker.js",
        contents: readFileSync(join(buildDir, "worker.js"), "utf8"),
      },
    ],
    compatibilityDate: "2025-01-01",
    bindings: {
      MANAGER_URL: manager.url,
      ROUTER_TOKEN: (await createRouterCredential(manager.url)).token,
      ...extra,
    },
    host: "127.0.0.1",
    port: 0,
  });
  miniflares.push(mf);
  return String(await mf.ready).replace(/\/$/, "");
}

for (const runtime of runtimes) {
  describe(`router on ${runtime}`, () => {
    let url: string;
    beforeAll(async () => {
      url = await startRuntime(runtime);
    });

    const chat = (model: string, content: string) =>
      fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
        body: JSON.stringify({ model, messages: [{ role: "user", content }], max_tokens: 4 }),
      });

    test("a redirect from the only replica is a 502, and the redirect is never followed", async () => {
      const before = bounced;
      const response = await chat("bounce", `secret prompt via ${runtime}`);
      expect(response.status).toBe(502);
      const body = (await response.json()) as { error: { code: string; message: string } };
      expect(body.error.code).toBe("upstream_error");
      expect(body.error.message).toContain("redirect");
      expect(bounced).toBeGreaterThan(before);
      expect(followed).toEqual([]);
    });

    test("a redirecting replica is skipped for one that answers", async () => {
      const before = bounced;
      for (let index = 0; index < 8; index++) {
        const response = await chat("qwen", `request ${index} via ${runtime}`);
        expect(response.status).toBe(200);
        const body = (await response.json()) as { choices: unknown[]; stolen?: boolean };
        expect(body.stolen).toBeUndefined();
        expect(body.choices).toHaveLength(1);
      }
      // The balancer picks at random: over 8 requests it tried the redirecting one too.
      expect(bounced).toBeGreaterThan(before);
      expect(followed).toEqual([]);
    });
  });
}
