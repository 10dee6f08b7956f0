import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI, { APIError } from "openai";
import { type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { metricAt } from "../../devkit/metrics.ts";
import { eventually, freePort } from "../../devkit/net.ts";
import { startProcess, stopAll } from "../../devkit/proc.ts";
import type { RouterList } from "../../protocol/index.ts";
import {
  addReplicas,
  fleetToken,
  revokeRouterCredential,
  routerArgv,
  type ServedManager,
  type Sim,
  serveManager,
  startRouter,
  startSim,
} from "./fixtures.ts";

/**
 * A standalone router's own credential, across processes: on Bun and on Node it reads routes
 * and posts usage with ROUTER_TOKEN; once the credential is revoked its next refresh is
 * refused, and it keeps serving the last table it has (as docs/router.md says); and a router
 * given only the join token (FLEET_TOKEN) stops at startup with the way out.
 */

let db: OpenTestDb;
let sim: Sim;

beforeAll(async () => {
  [db, sim] = await Promise.all([openFreshDb(), startSim({ names: ["qwen", "late"] })]);
});

afterAll(async () => {
  await stopAll();
  await db?.destroy();
});

const chat = (client: OpenAI, model: string) =>
  client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "hello" }],
    max_tokens: 4,
  });

for (const runtime of ["bun", "node"] as const) {
  describe(`router credential on ${runtime}`, () => {
    let manager: ServedManager;

    beforeAll(async () => {
      manager = await serveManager(db);
      await addReplicas(manager, "qwen", [{ workerId: "w1", url: sim.url }]);
    });

    afterAll(() => manager?.close());

    test("with ROUTER_TOKEN it reads routes and posts usage; revoked, it is refused and serves its last table", async () => {
      const router = await startRouter(runtime, manager.url);
      const client = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: "none", maxRetries: 0 });
      const reply = await chat(client, "qwen");
      expect(reply.choices[0]?.message.content?.length).toBeGreaterThan(0);
      await eventually(async () => (await manager.usage()).some((row) => row.alias === "qwen"), {
        what: "the router's usage at the manager",
      });
      const listed = await manager.json<RouterList>("GET", "/v1/routers");
      const mine = listed.body.routers.find((r) => r.id === router.credential.id);
      expect(mine?.last_used_at).not.toBeNull();
      const failures = () => metricAt(router.metrics, "fleet_router_routes_refresh_failures_total");
      expect(await failures()).toBeNaN();

      await revokeRouterCredential(manager.url, router.credential.id);
      // A model placed after the revocation never reaches this router.
      await addReplicas(manager, "late", [{ workerId: "w2", url: sim.url }]);
      await eventually(async () => (await failures()) >= 1, {
        what: "the router's next snapshot refresh to be refused",
      });
      await router.waitFor("the manager refused this router's credential", 10_000);
      expect(router.output()).toContain("fleet routers create");
      // Stale beats down: what it had still serves; what came later is unknown to it.
      expect((await chat(client, "qwen")).choices[0]?.message.content?.length).toBeGreaterThan(0);
      const late = await chat(client, "late").catch((error: unknown) => error);
      expect(late).toBeInstanceOf(APIError);
      expect((late as APIError).status).toBe(404);
      await router.stop();
    });

    test("with FLEET_TOKEN and no ROUTER_TOKEN it exits, saying to run fleet routers create", async () => {
      const router = startProcess(routerArgv(runtime), {
        env: {
          MANAGER_URL: manager.url,
          FLEET_TOKEN: fleetToken,
          HOST: "127.0.0.1",
          PORT: String(await freePort()),
        },
      });
      expect(await router.exited()).toBe(1);
      expect(router.output()).toContain("ROUTER_TOKEN must be set");
      expect(router.output()).toContain("fleet routers create NAME");
      expect(router.output()).not.toContain(fleetToken);
      expect(router.output()).not.toContain("router listening");
    });
  });
}
