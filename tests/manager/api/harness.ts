import { afterAll, afterEach, beforeAll, describe } from "bun:test";
import { type DbTarget, dbTargets, type OpenTestDb, openFreshDb } from "../../../devkit/db.ts";
import type { Gpu, ModelInfo, OpenAiError } from "../../../protocol/index.ts";
import {
  gpu,
  registration,
  type StubAgent,
  stubAgent,
  type TestManager,
  testManager,
} from "../helpers.ts";

/**
 * What the manager API tests share, one file per resource: a database per file and target
 * (PGlite, and Postgres when DATABASE_URL is set), emptied for each test, and the few calls
 * most tests start with.
 */
export type ApiHarness = {
  /** The manager app over the file's database, emptied first; closed after the test. */
  manager(options?: Omit<Parameters<typeof testManager>[0], "db" | "target">): Promise<TestManager>;
  /** A stub agent over HTTP (launches, stops, reports), stopped after the file. */
  agent(): StubAgent;
  /**
   * `POST /v1/workers/register` for a worker managed through `agent`, one 80 GiB GPU by
   * default: it joins with the join token, then re-registers with its own credential.
   */
  register(
    agent: StubAgent | { url: string },
    workerId: string,
    gpus?: Gpu[],
    extra?: Parameters<typeof registration>[3],
  ): Promise<{ status: number; body: Record<string, unknown> }>;
  /** `POST /v1/models/register` with a default model_name. */
  model(body: Record<string, unknown>): Promise<{ status: number; body: ModelInfo & OpenAiError }>;
};

/** `describe(name)` once per database target, with a harness for its tests. */
export function describeApi(name: string, body: (api: ApiHarness, target: DbTarget) => void) {
  for (const target of dbTargets) {
    describe(`${name} (${target})`, () => {
      let db: OpenTestDb;
      let current: TestManager | undefined;
      const agents: StubAgent[] = [];
      beforeAll(async () => {
        db = await openFreshDb(target);
      });
      afterEach(async () => {
        await current?.close();
        current = undefined;
      });
      afterAll(async () => {
        for (const agent of agents) agent.stop();
        await db?.destroy();
      });

      const manager = (): TestManager => {
        if (!current) throw new Error("call api.manager() first");
        return current;
      };
      body(
        {
          async manager(options = {}) {
            await current?.close();
            current = await testManager({ ...options, db });
            return current;
          },
          agent() {
            const agent = stubAgent();
            agents.push(agent);
            return agent;
          },
          register(agent, workerId, gpus = [gpu(0)], extra = {}) {
            return manager().register(
              registration(workerId, agent.url, gpus, extra),
              "token" in agent ? agent : undefined,
            );
          },
          model(fields) {
            return manager().json<ModelInfo & OpenAiError>("POST", "/v1/models/register", {
              body: { model_name: "Qwen/Qwen2.5-0.5B", ...fields },
            });
          },
        },
        target,
      );
    });
  }
}
