import { afterEach, describe, expect, test } from "bun:test";
import { createLogger } from "../../kit/log.ts";
import { fleetVersion } from "../../kit/version.ts";
import { registration, type TestManager, testManager } from "./helpers.ts";

describe("version skew", () => {
  let t: TestManager | undefined;
  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  test("a worker registering with another release than the manager's is warned about, one on the same is not", async () => {
    const lines: string[] = [];
    t = await testManager({
      log: createLogger({ service: "manager", level: "warn", write: (line) => lines.push(line) }),
    });
    const same = await t.register(
      registration("same", "http://127.0.0.1:9", [], { agent_version: fleetVersion }),
    );
    expect(same.status).toBe(200);
    expect(lines.filter((line) => line.includes("another release"))).toEqual([]);

    const old = await t.register(
      registration("old", "http://127.0.0.1:9", [], { agent_version: "0.0.1" }),
    );
    expect(old.status).toBe(200);
    const warnings = lines
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((record) => String(record.msg).includes("another release"));
    expect(warnings).toEqual([
      expect.objectContaining({
        level: "warn",
        worker_id: "old",
        agent_version: "0.0.1",
        manager_version: fleetVersion,
      }),
    ]);
  });
});
