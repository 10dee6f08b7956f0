import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { eq, sql } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import { dbTargets, type OpenTestDb, openFreshDb } from "../../devkit/db.ts";

/** Drizzle's query builders are thenables; `expect().rejects` wants a real Promise. */
const attempt = (query: PromiseLike<unknown>) => Promise.resolve(query);

const { workers, gpus, models, instances, routes, apiKeys, requestLogs, fleetState, routeTable } =
  schema;

describe.each(dbTargets)("db schema on %s", (target) => {
  let fleet: OpenTestDb;

  beforeAll(async () => {
    fleet = await openFreshDb(target);
  });
  afterAll(async () => {
    await fleet?.destroy();
  });

  async function routesVersion(): Promise<number> {
    const [row] = await fleet.db.select().from(fleetState);
    if (!row) throw new Error("fleet_state has no row");
    return row.routesVersion;
  }

  async function addWorker(workerId: string, publicUrl: string | null = null) {
    await fleet.db.insert(workers).values({
      workerId,
      workerUrl: `http://127.0.0.1:6006`,
      publicWorkerUrl: publicUrl,
    });
    await fleet.db
      .insert(gpus)
      .values({ workerId, index: 0, name: "NVIDIA H100", memoryTotalMib: 81559 });
  }

  async function addModelWithRoute(alias: string, workerId: string) {
    await fleet.db.insert(models).values({ alias, modelName: `org/${alias}` });
    const [instance] = await fleet.db
      .insert(instances)
      .values({ alias, workerId, gpuIds: [0], gpuMemoryUtilization: 0.5 })
      .returning();
    if (!instance) throw new Error("no instance");
    const [worker] = await fleet.db.select().from(workers).where(eq(workers.workerId, workerId));
    await fleet.db.insert(routes).values({
      alias,
      modelName: `org/${alias}`,
      workerId,
      workerUrl: worker?.publicWorkerUrl ?? worker?.workerUrl ?? "",
      vllmPort: 40000,
      instanceId: instance.id,
    });
    return instance;
  }

  test("migrating again is a no-op", async () => {
    const before = await fleet.query<{ n: number }>(
      sql`select count(*)::int as n from drizzle.__drizzle_migrations`,
    );
    await fleet.migrate();
    const after = await fleet.query<{ n: number }>(
      sql`select count(*)::int as n from drizzle.__drizzle_migrations`,
    );
    expect(after[0]?.n).toBe(before[0]?.n);
    expect(before[0]?.n).toBeGreaterThanOrEqual(2);
  });

  test("every table and the route_table view exist", async () => {
    const rows = await fleet.query<{ name: string }>(sql`
      select table_name as name from information_schema.tables where table_schema = 'public'`);
    const names = rows.map((row) => row.name).sort();
    for (const name of [
      "api_keys",
      "events",
      "fleet_state",
      "gpus",
      "instances",
      "models",
      "request_logs",
      "route_table",
      "routes",
      "usage_dead_letters",
      "workers",
    ]) {
      expect(names).toContain(name);
    }
  });

  test("route_table shows the public URL in use and whether the route serves", async () => {
    await addWorker("rental-1", "https://u557149-9507-6992150f.bjb2.seetacloud.com:8443");
    await addWorker("lab-1");
    await addModelWithRoute("qwen-vl-2b", "rental-1");
    const lab = await addModelWithRoute("llama", "lab-1");
    await fleet.db.update(routes).set({ ready: true }).where(eq(routes.instanceId, lab.id));

    const rows = await fleet.db.select().from(routeTable).orderBy(routeTable.alias);
    expect(rows.map((row) => [row.alias, row.url, row.isPublic, row.serving])).toEqual([
      ["llama", "http://127.0.0.1:6006", false, true],
      ["qwen-vl-2b", "https://u557149-9507-6992150f.bjb2.seetacloud.com:8443", true, false],
    ]);
    expect(rows[0]?.instanceStatus).toBe("pending");
    expect(rows[0]?.workerStatus).toBe("online");

    await fleet.db.update(workers).set({ status: "offline" }).where(eq(workers.workerId, "lab-1"));
    const [llama] = await fleet.db.select().from(routeTable).where(eq(routeTable.alias, "llama"));
    expect(llama?.serving).toBe(false);
  });

  test("a duplicate alias is refused by the database", async () => {
    await fleet.db.insert(models).values({ alias: "dup", modelName: "a" });
    await expect(
      attempt(fleet.db.insert(models).values({ alias: "dup", modelName: "b" })),
    ).rejects.toThrow();
  });

  test("one instance per alias per worker, one route per instance", async () => {
    await addWorker("w-unique");
    const instance = await addModelWithRoute("uniq", "w-unique");
    await expect(
      attempt(
        fleet.db
          .insert(instances)
          .values({ alias: "uniq", workerId: "w-unique", gpuMemoryUtilization: 0.1 }),
      ),
    ).rejects.toThrow();
    await expect(
      attempt(
        fleet.db.insert(routes).values({
          alias: "uniq",
          modelName: "x",
          workerId: "w-unique",
          workerUrl: "http://127.0.0.1:1",
          instanceId: instance.id,
        }),
      ),
    ).rejects.toThrow();
  });

  test("checks refuse impossible values", async () => {
    await expect(
      attempt(
        fleet.db
          .insert(models)
          .values({ alias: "bad-util", modelName: "x", gpuMemoryUtilization: 1.5 }),
      ),
    ).rejects.toThrow();
    await expect(
      attempt(
        fleet.db
          .insert(workers)
          .values({ workerId: "bad-status", workerUrl: "http://x", status: "gone" as "online" }),
      ),
    ).rejects.toThrow();
  });

  test("deleting a model removes its instances and routes; usage rows outlive keys", async () => {
    await addWorker("w-cascade");
    await addModelWithRoute("cascade", "w-cascade");
    await fleet.db
      .insert(apiKeys)
      .values({ id: "key_1", keyHash: "a".repeat(64), prefix: "sk-fleet-ab", name: "ci" });
    await fleet.db.insert(requestLogs).values({
      apiKeyId: "key_1",
      alias: "cascade",
      workerId: "w-cascade",
      status: 200,
      latencyMs: 12,
    });

    await fleet.db.delete(models).where(eq(models.alias, "cascade"));
    expect(await fleet.db.select().from(instances).where(eq(instances.alias, "cascade"))).toEqual(
      [],
    );
    expect(await fleet.db.select().from(routes).where(eq(routes.alias, "cascade"))).toEqual([]);

    await fleet.db.delete(apiKeys).where(eq(apiKeys.id, "key_1"));
    const logs = await fleet.db.select().from(requestLogs).where(eq(requestLogs.alias, "cascade"));
    expect(logs).toHaveLength(1);
    expect(logs[0]?.apiKeyId).toBeNull();
  });

  test("the routes version moves with route changes, not with heartbeats", async () => {
    await addWorker("w-version");
    const start = await routesVersion();
    const instance = await addModelWithRoute("versioned", "w-version");
    const afterInsert = await routesVersion();
    expect(afterInsert).toBeGreaterThan(start);

    // A heartbeat: last_heartbeat moves, nothing a router sees changes.
    await fleet.db
      .update(workers)
      .set({ lastHeartbeat: new Date() })
      .where(eq(workers.workerId, "w-version"));
    // A no-op route update.
    await fleet.db.update(routes).set({ ready: false }).where(eq(routes.instanceId, instance.id));
    expect(await routesVersion()).toBe(afterInsert);

    await fleet.db.update(routes).set({ ready: true }).where(eq(routes.instanceId, instance.id));
    const afterReady = await routesVersion();
    expect(afterReady).toBeGreaterThan(afterInsert);

    await fleet.db
      .update(workers)
      .set({ status: "offline" })
      .where(eq(workers.workerId, "w-version"));
    expect(await routesVersion()).toBeGreaterThan(afterReady);

    // By hand, as an operator might: TRUNCATE fires no row triggers, statement ones do.
    const beforeTruncate = await routesVersion();
    await fleet.query(sql`truncate routes`);
    expect(await routesVersion()).toBeGreaterThan(beforeTruncate);

    const beforeKey = await routesVersion();
    await fleet.db
      .insert(apiKeys)
      .values({ id: "key_v", keyHash: "b".repeat(64), prefix: "p", name: "n" });
    expect(await routesVersion()).toBeGreaterThan(beforeKey);
  });
});
