import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { Server } from "bun";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { corsPreflight, eventually, freePort, waitForHttp } from "../../devkit/net.ts";
import { bunBin, type Service, startProcess, stopAll } from "../../devkit/proc.ts";
import { sseData, streamText } from "../../devkit/sse.ts";
import type { InstanceReport, InstanceSpec } from "../../protocol/index.ts";
import { gpu } from "./helpers.ts";

// Real processes on a shared 2-core machine.
setDefaultTimeout(90_000);

/**
 * The router mounted in the manager sends a worker what a standalone router sends: the
 * client's address in X-Forwarded-For (from the connection, never from the client's own
 * header), X-Forwarded-Proto and X-Forwarded-Host. On Bun (`npm start`) and Node
 * (`npm run manager:node`), with a loopback server standing in for the worker's agent.
 */

const runtimes = {
  bun: [bunBin, "manager/main.ts"],
  // tsx as a loader (not its CLI) keeps the manager one process that stop() reaches.
  node: ["node", "--import", "tsx", "manager/node.ts"],
} as const;

type Seen = { path: string; headers: Headers };

for (const [runtime, argv] of Object.entries(runtimes)) {
  describe(`mounted router on ${runtime} (${serviceDbTarget})`, () => {
    let database: TestDatabase;
    let manager: Service;
    let url: string;
    let worker: Server<undefined>;
    const seen: Seen[] = [];
    /** Streams of the worker whose reader (the router) went away. */
    let streamsCancelled = 0;
    const reports = new Map<string, InstanceReport>();

    beforeAll(async () => {
      // The worker: an agent in its management answers, a recorder of what /proxy receives.
      worker = Bun.serve({
        hostname: "127.0.0.1",
        port: 0,
        async fetch(request) {
          const path = new URL(request.url).pathname;
          if (path === "/health") return Response.json({ status: "ok", worker_id: "rec" });
          if (path === "/v1/instances" && request.method === "POST") {
            const spec = (await request.json()) as InstanceSpec;
            const now = new Date().toISOString();
            const report: InstanceReport = {
              alias: spec.alias,
              model_name: spec.model_name,
              status: "ready",
              port: 19_999,
              gpu_ids: spec.gpu_ids ?? [],
              pid: 4242,
              restarts: 0,
              last_error: null,
              started_at: now,
              ready_at: now,
              updated_at: now,
              spec,
            };
            reports.set(spec.alias, report);
            return Response.json(report, { status: 202 });
          }
          if (path === "/v1/instances") return Response.json({ instances: [...reports.values()] });
          if (path.startsWith("/proxy/")) {
            seen.push({ path, headers: request.headers });
            const asked = (await request.json()) as { stream?: boolean };
            if (asked.stream) {
              // A stream that never ends: one token every 100 ms until the reader goes away.
              let timer: ReturnType<typeof setInterval> | undefined;
              const chunk = 'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n';
              const body = new ReadableStream<Uint8Array>({
                start(controller) {
                  controller.enqueue(new TextEncoder().encode(chunk));
                  timer = setInterval(() => {
                    try {
                      controller.enqueue(new TextEncoder().encode(chunk));
                    } catch {
                      clearInterval(timer);
                    }
                  }, 100);
                },
                cancel() {
                  clearInterval(timer);
                  streamsCancelled++;
                },
              });
              return new Response(body, { headers: { "content-type": "text/event-stream" } });
            }
            return Response.json({
              id: "chatcmpl-rec",
              object: "chat.completion",
              created: 0,
              model: "rec",
              choices: [
                { index: 0, message: { role: "assistant", content: "hi" }, finish_reason: "stop" },
              ],
              usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
            });
          }
          return Response.json({ error: { message: "no" } }, { status: 404 });
        },
      });
      database = await createTestDatabase();
      const port = await freePort();
      url = `http://127.0.0.1:${port}`;
      // Open on loopback (no tokens), probes off: the worker registers and reports itself.
      manager = startProcess([...argv], {
        env: {
          DATABASE_URL: "",
          ...database.env,
          HOST: "127.0.0.1",
          PORT: String(port),
          PROBE_INTERVAL_S: "0",
          SHUTDOWN_TIMEOUT_S: "8",
          RECONCILE_INTERVAL_S: "0.3",
          ROUTES_POLL_MS: "100",
        },
      });
      await manager.waitFor("manager listening", 60_000);
      await waitForHttp(`${url}/health`);
      const post = (path: string, body: unknown) =>
        fetch(`${url}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        });
      const gpuInfo = { gpus: [gpu(0)], warning: null };
      const joined = await post("/v1/workers/register", {
        worker_id: "rec",
        worker_url: `http://127.0.0.1:${worker.port}`,
        public_worker_url: null,
        gpu_info: gpuInfo,
        instances: [],
        agent_version: "0.1.0",
      });
      expect(joined.status).toBe(200);
      const placed = await post("/v1/models/register", { alias: "rec", model_name: "org/rec" });
      expect(placed.status).toBe(201);
      await eventually(() => reports.has("rec"), { what: "the launch call" });
      const beat = await post("/v1/workers/rec/heartbeat", {
        gpu_info: gpuInfo,
        instances: [...reports.values()],
      });
      expect(beat.status).toBe(200);
    });

    afterAll(async () => {
      await stopAll();
      worker?.stop(true);
      await database?.destroy();
    });

    test("the worker sees the client's address in X-Forwarded-For, and the proto and host", async () => {
      const reply = await eventually(
        async () => {
          const response = await fetch(`${url}/v1/chat/completions`, {
            method: "POST",
            // A client-sent X-Forwarded-For is not taken as the truth.
            headers: { "content-type": "application/json", "x-forwarded-for": "203.0.113.9" },
            body: JSON.stringify({ model: "rec", messages: [{ role: "user", content: "hi" }] }),
          });
          return response.status === 200 ? response : undefined;
        },
        { what: "the mounted router to serve rec" },
      );
      await reply.text();
      const last = seen.at(-1);
      expect(last?.path).toBe("/proxy/rec/v1/chat/completions");
      expect(last?.headers.get("x-forwarded-for")).toMatch(/^(127\.0\.0\.1|::ffff:127\.0\.0\.1)$/);
      expect(last?.headers.get("x-forwarded-proto")).toBe("http");
      expect(last?.headers.get("x-forwarded-host")).toBe(new URL(url).host);
    });

    test("a web page on another origin may call the OpenAI surface (CORS_ORIGINS defaults to every origin)", async () => {
      const page = "https://playground.example";
      const preflight = await corsPreflight(`${url}/v1/chat/completions`, page);
      expect(preflight.status).toBe(204);
      expect(preflight.headers.get("access-control-allow-origin")).toBe("*");
      expect(preflight.headers.get("access-control-allow-headers")).toBe(
        "authorization, content-type",
      );
      const reply = await eventually(
        async () => {
          const response = await fetch(`${url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json", origin: page },
            body: JSON.stringify({ model: "rec", messages: [{ role: "user", content: "hi" }] }),
          });
          return response.status === 200 ? response : undefined;
        },
        { what: "the mounted router to serve rec" },
      );
      await reply.text();
      expect(reply.headers.get("access-control-allow-origin")).toBe("*");
      // The model list too: the manager's own (the admin API is open here) and the router's.
      const models = await fetch(`${url}/v1/models`, { headers: { origin: page } });
      expect(models.status).toBe(200);
      expect(models.headers.get("access-control-allow-origin")).toBe("*");
      // The manager's own API is not offered to other origins.
      const workers = await fetch(`${url}/v1/workers`, { headers: { origin: page } });
      expect(workers.headers.has("access-control-allow-origin")).toBe(false);
    });

    test("on SIGTERM an open stream ends with an error event and [DONE], and the manager exits 0", async () => {
      const response = await fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "rec",
          stream: true,
          messages: [{ role: "user", content: "hi" }],
        }),
      });
      expect(response.status).toBe(200);
      const body = streamText(response);
      await body.until('"content"');
      const exited = manager.stop("SIGTERM", 60_000);
      const text = await body.rest();
      expect(await exited).toBe(0);
      const events = sseData(text);
      expect(events.at(-1)).toBe("[DONE]");
      const error = JSON.parse(events.at(-2) ?? "{}") as { error: Record<string, unknown> };
      expect(error.error).toMatchObject({ type: "server_error", code: 503 });
      // The worker was told to stop generating.
      await eventually(() => streamsCancelled > 0, { what: "the worker's stream cancelled" });
    });
  });
}
