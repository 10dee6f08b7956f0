import { describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import { type OpenTestDb, openFreshDb } from "../../../devkit/db.ts";
import { metric } from "../../../devkit/metrics.ts";
import { silentLogger } from "../../../kit/log.ts";
import { Metrics } from "../../../kit/metrics.ts";
import { checkRecords, UsageBuffer, writeUsage } from "../../../manager/services/usage.ts";
import type { ApiKeyCreated, UsageRecord } from "../../../protocol/index.ts";
import { openFileSpool } from "../../../runtime/file-spool.ts";
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
    const reply = await t.json<{ accepted: number; rejected: number }>("POST", "/v1/usage", {
      token,
      body: { records },
    });
    expect(reply).toEqual({ status: 202, body: { accepted: 1500, rejected: 0 } });
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

/** A record as a router sends it, valid unless `fields` say otherwise. */
function usageRecord(fields: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    ts: new Date().toISOString(),
    api_key_id: null,
    alias: "qwen",
    worker_id: "w1",
    status: 200,
    latency_ms: 10,
    ttft_ms: 5,
    prompt_tokens: 7,
    completion_tokens: 3,
    stream: false,
    ...fields,
  };
}

/** The ```sql blocks of docs/operations.md's section on usage, in order. */
const operations = await Bun.file(new URL("../../../docs/operations.md", import.meta.url)).text();
const usageSection = operations.slice(
  operations.indexOf("## Usage: bounds, dead letters and the spool"),
  operations.indexOf("## Stopping"),
);
const operationsQueries = [...usageSection.matchAll(/```sql\n([\s\S]*?)```/g)].map(
  (match) => match[1] ?? "",
);

type DeadLetterRow = { source: string; reason: string; record: Record<string, unknown> };

describeApi("manager API: usage it cannot write", (api) => {
  const stored = async (t: Awaited<ReturnType<typeof api.manager>>) =>
    (
      await t.db.query<{ latency_ms: number }>(
        sql`select latency_ms from request_logs order by latency_ms`,
      )
    ).map((row) => row.latency_ms);
  const deadLetters = (t: Awaited<ReturnType<typeof api.manager>>) =>
    t.db.query<DeadLetterRow>(
      sql`select source, reason, record from usage_dead_letters order by id`,
    );

  test("each record of a batch is judged alone: the good ones are written, the bad ones set aside with the reason", async () => {
    const t = await api.manager();
    const token = await createRouterToken(t);
    const bad = [
      usageRecord({ latency_ms: 101, prompt_tokens: 3e9 }),
      usageRecord({ latency_ms: 102, completion_tokens: -1 }),
      usageRecord({ latency_ms: 103, prompt_tokens: 1.5 }),
      usageRecord({ latency_ms: 104, completion_tokens: "12" }),
      usageRecord({ latency_ms: 105, alias: undefined }),
      "not a record",
      // Valid to the schema, refused by the database: found by splitting the batch.
      usageRecord({ latency_ms: 106, alias: "nul\u0000alias" }),
      // A lone surrogate: refused by the database too, and by jsonb (the dead letter) unless replaced.
      usageRecord({ latency_ms: 107, alias: "lone\ud800alias" }),
      { latency_ms: 108, note: "invalid and \udc00 alone" },
    ];
    const good = Array.from({ length: 300 }, (_, i) => usageRecord({ latency_ms: i + 1 }));
    const records = [...good.slice(0, 150), ...bad, ...good.slice(150)];
    const reply = await t.json("POST", "/v1/usage", { token, body: { records } });
    expect(reply).toEqual({ status: 202, body: { accepted: 300, rejected: bad.length } });
    expect(await stored(t)).toEqual(good.map((r) => r.latency_ms as number));

    const letters = await deadLetters(t);
    expect(letters.map((l) => l.record.latency_ms ?? null)).toEqual([
      101,
      102,
      103,
      104,
      105,
      null,
      108,
      106,
      107,
    ]);
    expect(letters.every((l) => l.source.startsWith("router:"))).toBe(true);
    expect(letters[0]?.reason).toStartWith("invalid: prompt_tokens:");
    expect(letters[2]?.reason).toStartWith("invalid: prompt_tokens:");
    expect(letters[3]?.reason).toStartWith("invalid: completion_tokens:");
    expect(letters[4]?.reason).toStartWith("invalid: alias:");
    expect(letters[7]?.reason).toStartWith("refused by the database: 22P05");
    // The record is kept, its NUL replaced (jsonb holds none), and no SQL in the reason.
    expect(letters[7]?.record.alias).toBe("nul\ufffdalias");
    // The same for a lone surrogate, refused or invalid.
    expect(letters[8]?.reason).toStartWith("refused by the database: 22P02");
    expect(letters[8]?.record.alias).toBe("lone\ufffdalias");
    expect(letters[6]?.record.note).toBe("invalid and \ufffd alone");
    expect(letters.some((l) => /insert|select/i.test(l.reason))).toBe(false);

    const text = t.manager.metrics.render();
    expect(metric(text, "fleet_manager_usage_records_written_total")).toBe(300);
    expect(
      metric(text, "fleet_manager_usage_dead_letters_total", {
        reason: "invalid",
        source: "router",
      }),
    ).toBe(7);
    expect(
      metric(text, "fleet_manager_usage_dead_letters_total", {
        reason: "refused",
        source: "router",
      }),
    ).toBe(2);
  });

  test("docs/operations.md's dead-letter queries run as written; the replay moves the records set aside only for their numbers", async () => {
    const t = await api.manager();
    const token = await createRouterToken(t);
    const records = [
      usageRecord({ latency_ms: 1, prompt_tokens: 3e9 }),
      usageRecord({ latency_ms: 2, completion_tokens: -1 }),
      usageRecord({ latency_ms: 3, prompt_tokens: 1.5, completion_tokens: "12" }),
      usageRecord({ latency_ms: 4, alias: undefined, prompt_tokens: -1 }),
      "not a record",
      usageRecord({ latency_ms: 6, alias: "nul\u0000alias" }),
    ];
    const reply = await t.json("POST", "/v1/usage", { token, body: { records } });
    expect(reply.body).toEqual({ accepted: 0, rejected: 6 });
    const [list, byKind, replay] = operationsQueries;
    if (!list || !byKind || !replay) throw new Error("docs/operations.md lost its queries");
    expect(await t.db.query(sql.raw(list))).toHaveLength(6);
    expect(await t.db.query(sql.raw(byKind))).toContainEqual({
      kind: "invalid",
      source: expect.stringMatching(/^router:/),
      records: 5,
    });
    await t.db.query(sql.raw(replay));
    const replayed = await t.db.query<{
      latency_ms: number;
      prompt_tokens: number | null;
      completion_tokens: number | null;
    }>(
      sql`select latency_ms, prompt_tokens, completion_tokens from request_logs order by latency_ms`,
    );
    expect(replayed).toEqual([
      { latency_ms: 1, prompt_tokens: null, completion_tokens: 3 },
      { latency_ms: 2, prompt_tokens: 7, completion_tokens: null },
      { latency_ms: 3, prompt_tokens: null, completion_tokens: null },
    ]);
    const left = await deadLetters(t);
    expect(left.map((l) => l.reason.split(":")[0])).toEqual([
      "invalid",
      "invalid",
      "refused by the database",
    ]);
  });

  test("the in-process sink sets a record the database refuses aside and writes the rest", async () => {
    const t = await api.manager();
    const records = Array.from({ length: 40 }, (_, i) =>
      usageRecord({ latency_ms: i + 1, worker_id: i === 17 ? "w\u0000" : "w1" }),
    );
    for (const record of records) t.manager.usage.record(record as UsageRecord);
    await t.manager.usage.flush();
    expect(await stored(t)).toEqual(
      records.filter((_, i) => i !== 17).map((r) => r.latency_ms as number),
    );
    const letters = await deadLetters(t);
    expect(letters).toHaveLength(1);
    expect(letters[0]).toMatchObject({ source: "manager", record: { latency_ms: 18 } });
    expect(t.manager.usage.waiting()).toBe(0);
    expect(
      metric(t.manager.metrics.render(), "fleet_manager_usage_dead_letters_total", {
        reason: "refused",
        source: "manager",
      }),
    ).toBe(1);
  });
});

describe("writeUsage", () => {
  test("a database that fails midway leaves nothing written, so the batch can be sent again", async () => {
    const db = await openFreshDb("pglite");
    try {
      const batch = checkRecords(
        Array.from({ length: 4500 }, (_, i) => usageRecord({ latency_ms: i })),
      );
      // A trigger stands in for a database that fails on the third chunk of 2,000 rows.
      await db.query(sql`
        create function fail_late() returns trigger language plpgsql as $$
        begin
          if new.latency_ms = 4200 then raise exception 'disk full' using errcode = '53100'; end if;
          return new;
        end $$`);
      await db.query(
        sql`create trigger fail_late before insert on request_logs for each row execute function fail_late()`,
      );
      await expect(writeUsage(db.db, batch, "test")).rejects.toThrow();
      const count = async () =>
        (await db.query<{ n: number }>(sql`select count(*)::int as n from request_logs`))[0]?.n;
      expect(await count()).toBe(0);
      await db.query(sql`drop trigger fail_late on request_logs`);
      expect(await writeUsage(db.db, batch, "test")).toEqual({
        written: 4500,
        invalid: 0,
        refused: 0,
      });
      expect(await count()).toBe(4500);
    } finally {
      await db.destroy();
    }
  });
});

describe("UsageBuffer with a spool", () => {
  const count = async (db: OpenTestDb) =>
    (await db.query<{ n: number }>(sql`select count(*)::int as n from request_logs`))[0]?.n;

  test("while the database is down records go to disk; a manager restarted over the same spool writes every one", async () => {
    const dir = mkdtempSync(join(tmpdir(), "fleet-usage-spool-"));
    const down = await openFreshDb("pglite");
    await down.close(); // a database that no longer answers
    const metrics = new Metrics();
    const before = new UsageBuffer({
      db: down.db,
      log: silentLogger,
      metrics,
      spool: openFileSpool({ dir, maxBytes: 1024 * 1024, log: silentLogger }),
    });
    for (let i = 1; i <= 30; i++) before.record(usageRecord({ latency_ms: i }) as UsageRecord);
    await before.flush();
    expect(before.waiting()).toBe(30);
    // What waits is on disk, not in memory: a crash now would lose nothing.
    expect(metric(metrics.render(), "fleet_manager_usage_pending", { where: "spool" })).toBe(30);
    expect(metric(metrics.render(), "fleet_manager_usage_pending", { where: "memory" })).toBe(0);
    for (let i = 31; i <= 35; i++) before.record(usageRecord({ latency_ms: i }) as UsageRecord);
    await before.close(); // the last five go to the spool too

    const db = await openFreshDb("pglite");
    try {
      const after = new UsageBuffer({
        db: db.db,
        log: silentLogger,
        spool: openFileSpool({ dir, maxBytes: 1024 * 1024, log: silentLogger }),
      });
      expect(after.waiting()).toBe(35);
      await after.flush();
      expect(await count(db)).toBe(35);
      expect(after.waiting()).toBe(0);
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      await db.destroy();
    }
  });
});
