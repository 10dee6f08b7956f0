import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { metricAt } from "../../devkit/metrics.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import type { ModelInfo, RouteSnapshot } from "../../protocol/index.ts";
import {
  addReplicas,
  type Router,
  type ServedManager,
  type Sim,
  serveManager,
  startRouter,
  startSim,
} from "./fixtures.ts";

/**
 * Prefix affinity across routers: a Bun and a Node router, sharing nothing but the route
 * snapshot, send every turn of a conversation to the same replica, where its prefix is
 * cached. Each replica is a simulator standing in for a whole worker.
 */

let db: OpenTestDb;
let manager: ServedManager;
let sims: Sim[];
let routers: Router[];

beforeAll(async () => {
  db = await openFreshDb();
  manager = await serveManager(db);
  sims = await Promise.all([0, 1, 2].map(() => startSim({ names: ["chat"], ttftMs: 0, itlMs: 0 })));
  await addReplicas(
    manager,
    "chat",
    sims.map((sim, index) => ({ workerId: `w${index}`, url: sim.url })),
  );
  routers = await Promise.all([startRouter("bun", manager.url), startRouter("node", manager.url)]);
}, 90_000);

afterAll(async () => {
  await stopAll();
  await manager?.close();
  await db?.destroy();
});

const promptTokens = (sim: Sim) => metricAt(`${sim.url}/metrics`, "vllm:prompt_tokens_total");

/** Sends one chat turn through `router`; answers the index of the replica that served it. */
async function turn(router: Router, messages: { role: string; content: string }[]) {
  const before = await Promise.all(sims.map(promptTokens));
  const response = await fetch(`${router.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "chat", messages, max_tokens: 16 }),
  });
  expect(response.status).toBe(200);
  const body = (await response.json()) as { choices: { message: { content: string } }[] };
  const after = await Promise.all(sims.map(promptTokens));
  const served = after.map((value, index) => value - (before[index] ?? 0)).findIndex((d) => d > 0);
  return { served, answer: body.choices[0]?.message.content ?? "" };
}

describe("routing policy across routers", () => {
  test("the snapshot carries the model's policy: prefix_affinity by default", async () => {
    const { body } = await manager.json<RouteSnapshot>("GET", "/v1/routes");
    expect(body.routes.map((route) => route.routing)).toEqual([
      "prefix_affinity",
      "prefix_affinity",
      "prefix_affinity",
    ]);
    const model = await manager.json<ModelInfo>("GET", "/v1/models/chat");
    expect(model.body.routing).toBe("prefix_affinity");
    const bad = await manager.call("POST", "/v1/models/register", {
      body: { alias: "bad", model_name: "org/bad", routing: "random" },
    });
    expect(bad.status).toBe(400);
  });

  test("every turn of a conversation lands on one replica, whichever router sends it", async () => {
    const system = { role: "system", content: "You are a patient tutor. ".repeat(40) };
    const homes = new Set<number>();
    for (let user = 0; user < 9; user++) {
      const messages = [system, { role: "user", content: `student ${user}: what is a prime?` }];
      const first = await turn(routers[user % 2] as Router, messages);
      expect(first.served).toBeGreaterThanOrEqual(0);
      messages.push({ role: "assistant", content: first.answer });
      messages.push({ role: "user", content: "and a composite?" });
      const second = await turn(routers[(user + 1) % 2] as Router, messages);
      expect(second.served).toBe(first.served);
      homes.add(first.served);
    }
    // Different conversations spread: not every one of nine on a single replica.
    expect(homes.size).toBeGreaterThan(1);
    // The second turns found their history cached where they landed.
    await eventually(
      async () => {
        const hits = await Promise.all(
          sims.map((sim) => metricAt(`${sim.url}/metrics`, "vllm:prefix_cache_hits_total")),
        );
        return hits.reduce((a, b) => a + b, 0) > 9 * 200;
      },
      { what: "prefix-cache hits on the replicas" },
    );
  });
});
