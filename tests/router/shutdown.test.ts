import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { metricAt } from "../../devkit/metrics.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import { sseData, streamText } from "../../devkit/sse.ts";
import {
  addReplicas,
  type ServedManager,
  type Sim,
  serveManager,
  startRouter,
  startSim,
} from "./fixtures.ts";

// Real processes on a shared 2-core machine.
setDefaultTimeout(90_000);

/**
 * A standalone router told to stop (SIGTERM) while a stream is open: at its deadline
 * (SHUTDOWN_TIMEOUT_S) the client gets an error event in OpenAI's shape and `data: [DONE]` (not a cut connection),
 * the engine is told to stop generating, the request is recorded as 503, and the router
 * exits 0. On Bun and Node.
 */

let db: OpenTestDb;
let manager: ServedManager;
let sim: Sim;

beforeAll(async () => {
  // 200 ms between tokens and 1,000 tokens: the stream outlasts any grace.
  sim = await startSim({ names: ["qwen"], itlMs: 200 });
  db = await openFreshDb();
  manager = await serveManager(db, { config: { probeIntervalS: 0 } });
  await addReplicas(manager, "qwen", [{ workerId: "w", url: sim.url }]);
});

afterAll(async () => {
  await stopAll();
  await manager?.close();
  await db?.destroy();
});

type ErrorEvent = { error: { message: string; type: string; param: null; code: number } };

for (const runtime of ["bun", "node"] as const) {
  describe(`router on ${runtime} shutting down`, () => {
    test("ends an open stream with an error event and [DONE], then exits 0", async () => {
      // 8 s: 6 s for the stream to finish on its own (it will not), 2 s for the last steps.
      const router = await startRouter(runtime, manager.url, { SHUTDOWN_TIMEOUT_S: "8" });
      const aborted = () =>
        metricAt(`${sim.url}/metrics`, "vllm:request_success_total", { finished_reason: "abort" });
      const abortedBefore = (await aborted()) || 0;
      const response = await fetch(`${router.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "qwen",
          messages: [{ role: "user", content: "count ".repeat(50) }],
          stream: true,
          max_tokens: 1000,
          ignore_eos: true,
        }),
      });
      expect(response.status).toBe(200);
      const body = streamText(response);
      // The stream is producing tokens before the signal.
      await body.until('"content"');
      const exited = router.stop("SIGTERM", 60_000);
      const text = await body.rest();
      expect(await exited).toBe(0);

      const events = sseData(text);
      expect(events.at(-1)).toBe("[DONE]");
      const last = JSON.parse(events.at(-2) ?? "{}") as ErrorEvent;
      expect(last.error).toMatchObject({ type: "server_error", param: null, code: 503 });
      expect(last.error.message).toContain("shutting down");
      // Every event before it is a whole chunk of the answer.
      for (const event of events.slice(0, -2)) expect(() => JSON.parse(event)).not.toThrow();
      expect(router.output()).toContain("open streams ended");
      // The engine stopped generating for a response that will not go on.
      await eventually(async () => (await aborted()) > abortedBefore, {
        what: "the engine to see the abort",
      });
      // The router flushed its usage on the way out: the request is recorded as 503.
      const rows = await manager.usage();
      expect(rows.some((row) => row.status === 503 && row.stream)).toBe(true);
    });
  });
}
