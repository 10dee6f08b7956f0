import { expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import type { ApiKeyCreated } from "../../../protocol/index.ts";
import { createRouterToken } from "../helpers.ts";
import { describeApi } from "./harness.ts";

/**
 * Usage from routers (batches over HTTP) and from the mounted router (the in-process sink).
 */
describeApi("manager API: usage", (api) => {
  test("usage batches become request_logs rows", async () => {
    const t = await api.manager();
    const key = await t.json<ApiKeyCreated>("POST", "/v1/keys", { body: { name: "u" } });
    const token = await createRouterToken(t);
    const record = (i: number, keyId: string | null) => ({
      ts: new Date().toISOString(),
      api_key_id: keyId,
      alias: "qwen",
      worker_id: "w1",
      status: 200,
      latency_ms: 10 + i,
      ttft_ms: 5,
      prompt_tokens: 7,
      completion_tokens: i,
      stream: i % 2 === 0,
    });
    const records = [
      record(0, key.body.id),
      record(1, "key_gone"),
      ...Array.from({ length: 1498 }, (_, i) => record(i + 2, null)),
    ];
    const reply = await t.json<{ accepted: number }>("POST", "/v1/usage", {
      token,
      body: { records },
    });
    expect(reply).toEqual({ status: 202, body: { accepted: 1500 } });
    const rows = await t.db.query<{ n: number; keyed: number; tokens: number }>(
      sql`select count(*)::int as n, count(api_key_id)::int as keyed, sum(completion_tokens)::int as tokens from request_logs`,
    );
    expect(rows[0]).toEqual({ n: 1500, keyed: 1, tokens: (1499 * 1500) / 2 });
  });

  test("the in-process usage sink batches records and flushes on close", async () => {
    const t = await api.manager();
    for (let i = 0; i < 20; i++) {
      t.manager.usage.record({
        ts: new Date().toISOString(),
        api_key_id: null,
        alias: "a",
        worker_id: null,
        status: 200,
        latency_ms: 1,
        ttft_ms: null,
        prompt_tokens: null,
        completion_tokens: null,
        stream: false,
      });
    }
    const before = await t.db.query<{ n: number }>(
      sql`select count(*)::int as n from request_logs`,
    );
    expect(before[0]?.n).toBe(0);
    await t.manager.close();
    const after = await t.db.query<{ n: number }>(sql`select count(*)::int as n from request_logs`);
    expect(after[0]?.n).toBe(20);
  });
});
