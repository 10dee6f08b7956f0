import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { asc, eq, like } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import type { InstanceRow, ModelRow } from "../../db/schema/index.ts";
import { dbTargets, type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import {
  instanceTransitions,
  Lifecycle,
  type RowStatus,
  type TransitionName,
  type TransitionSpec,
  type Trigger,
  type UpdateTransition,
} from "../../manager/services/lifecycle.ts";
import {
  type InstanceRecordStatus,
  type InstanceReport,
  instanceRecordStatuses,
} from "../../protocol/index.ts";

const T0 = new Date("2026-01-01T00:00:00Z");
const NOW = new Date("2026-01-01T00:01:00Z");
const names = Object.keys(instanceTransitions) as TransitionName[];
const spec = (name: TransitionName): TransitionSpec => instanceTransitions[name];

/** The transitions that update a row in place, walked from every status to every status. */
const inPlace: UpdateTransition[] = [
  "launched",
  "launch_failed",
  "reported",
  "spec_mismatch",
  "vanished",
  "lost",
  "evicted",
  "retried",
  "retry_blocked",
  "reschedule_blocked",
  "restarted",
  "restart_failed",
];

/** How docs/manager.md names each trigger (the start of the table's trigger column). */
const triggerWords: Record<Trigger, string> = {
  api: "API",
  "launch-reply": "launch reply",
  "agent-report": "agent report",
  reconciler: "reconciler",
};

describe("instance transition table", () => {
  test("every status but stopped is reached, and stopped is never written", () => {
    const reached = new Set(names.flatMap((n) => spec(n).to));
    for (const status of instanceRecordStatuses) {
      expect([status, reached.has(status)]).toEqual([status, status !== "stopped"]);
    }
    const left = new Set(names.flatMap((n) => spec(n).from));
    for (const status of instanceRecordStatuses) expect(left.has(status)).toBe(true);
  });

  test("docs/manager.md prints the same table", () => {
    const docs = readFileSync(new URL("../../docs/manager.md", import.meta.url), "utf8");
    const rows = new Map<string, string[]>();
    for (const line of docs.split("\n")) {
      const match = /^\|\s*`([a-z_]+)`\s*\|/.exec(line);
      if (match?.[1] && match[1] in instanceTransitions) {
        rows.set(
          match[1],
          line
            .split("|")
            .slice(1, -1)
            .map((cell) => cell.trim()),
        );
      }
    }
    const statuses = (cell = ""): RowStatus[] =>
      cell === "any"
        ? [...instanceRecordStatuses]
        : cell.startsWith("—")
          ? [null]
          : [...cell.matchAll(/`([a-z]+)`/g)].map((m) => m[1] as InstanceRecordStatus);
    const sorted = (list: readonly RowStatus[]) => [...list].map(String).sort();
    expect([...rows.keys()].sort()).toEqual([...names].sort());
    for (const name of names) {
      const [, from, to, trigger, event] = rows.get(name) ?? [];
      expect({ name, from: sorted(statuses(from)) }).toEqual({
        name,
        from: sorted(spec(name).from),
      });
      expect({ name, to: sorted(statuses(to)) }).toEqual({ name, to: sorted(spec(name).to) });
      expect({ name, trigger: trigger?.startsWith(triggerWords[spec(name).by]) }).toEqual({
        name,
        trigger: true,
      });
      expect({ name, event }).toEqual({ name, event: `\`${spec(name).event}\`` });
    }
  });
});

for (const target of dbTargets) {
  describe(`instance lifecycle (${target})`, () => {
    let db: OpenTestDb;
    let model: ModelRow;
    let refreshes = 0;
    let forgotten: string[] = [];
    let lifecycle: Lifecycle;

    beforeAll(async () => {
      db = await openFreshDb(target);
      lifecycle = new Lifecycle({
        db: db.db,
        routes: {
          refresh: async () => {
            refreshes++;
          },
        },
        onWorkerChanged: (workerId) => forgotten.push(workerId),
      });
      await db.db.insert(schema.workers).values([
        { workerId: "w1", workerUrl: "http://10.0.0.1:6006", status: "online" },
        {
          workerId: "w2",
          workerUrl: "http://10.0.0.2:6006",
          publicWorkerUrl: "https://w2.example:8443",
          status: "online",
        },
        { workerId: "w3", workerUrl: "http://10.0.0.3:6006", status: "offline" },
      ]);
      const [row] = await db.db
        .insert(schema.models)
        .values({ alias: "m", modelName: "org/m", gpuMemoryUtilization: 0.5 })
        .returning();
      if (!row) throw new Error("no model row");
      model = row;
    });
    afterAll(async () => {
      await db.destroy();
    });
    beforeEach(async () => {
      await db.db.delete(schema.instances);
      refreshes = 0;
      forgotten = [];
    });

    /** An instance in `status` on `workerId` with its route, as the lifecycle would have left it. */
    const seed = async (status: InstanceRecordStatus, workerId = "w1"): Promise<InstanceRow> => {
      const [instance] = await db.db
        .insert(schema.instances)
        .values({
          alias: "m",
          workerId,
          gpuIds: [0],
          gpuMemoryUtilization: 0.5,
          status,
          port: 8000,
          pid: 42,
          readyAt: status === "ready" ? T0 : null,
          createdAt: T0,
          updatedAt: T0,
        })
        .returning();
      if (!instance) throw new Error("no instance row");
      const [worker] = await db.db
        .select()
        .from(schema.workers)
        .where(eq(schema.workers.workerId, workerId));
      await db.db.insert(schema.routes).values({
        alias: "m",
        modelName: "org/m",
        workerId,
        workerUrl: worker?.publicWorkerUrl ?? worker?.workerUrl ?? "",
        vllmPort: 8000,
        instanceId: instance.id,
        ready: status === "ready" && worker?.status === "online",
        createdAt: T0,
        updatedAt: T0,
      });
      return instance;
    };
    const instanceRows = () =>
      db.db.select().from(schema.instances).orderBy(asc(schema.instances.workerId));
    const routeOf = async (instanceId: string) =>
      (await db.db.select().from(schema.routes).where(eq(schema.routes.instanceId, instanceId)))[0];
    const eventsOf = (instanceId: string) =>
      db.db.select().from(schema.events).where(eq(schema.events.instanceId, instanceId));
    const report = (status: InstanceReport["status"]): InstanceReport => ({
      alias: "m",
      model_name: "org/m",
      status,
      port: 8100,
      gpu_ids: [1],
      pid: 7,
      restarts: 0,
      last_error: null,
      started_at: null,
      ready_at: null,
      updated_at: NOW.toISOString(),
    });

    test("every allowed in-place transition is applied; every other one is ignored", async () => {
      const cases = inPlace.flatMap((name) =>
        instanceRecordStatuses.flatMap((from) =>
          instanceRecordStatuses.map((to) => ({ name, from, to, alias: "" })),
        ),
      );
      cases.forEach((c, i) => {
        c.alias = `case-${i}`;
      });
      // One model per case (an alias runs once per worker), all seeded in three statements.
      await db.db
        .insert(schema.models)
        .values(
          cases.map((c) => ({ alias: c.alias, modelName: "org/m", gpuMemoryUtilization: 0.5 })),
        );
      const seeded = await db.db
        .insert(schema.instances)
        .values(
          cases.map((c) => ({
            alias: c.alias,
            workerId: "w1",
            gpuIds: [0],
            gpuMemoryUtilization: 0.5,
            status: c.from,
            port: 8000,
            pid: 42,
            readyAt: c.from === "ready" ? T0 : null,
            createdAt: T0,
            updatedAt: T0,
          })),
        )
        .returning();
      const byAlias = new Map(seeded.map((i) => [i.alias, i]));
      await db.db.insert(schema.routes).values(
        seeded.map((i) => ({
          alias: i.alias,
          modelName: "org/m",
          workerId: "w1",
          workerUrl: "http://10.0.0.1:6006",
          vllmPort: 8000,
          instanceId: i.id,
          ready: i.status === "ready",
          createdAt: T0,
          updatedAt: T0,
        })),
      );

      const outcomes = new Map<
        string,
        { applied: boolean; refreshes: number; forgotten: string[] }
      >();
      for (const c of cases) {
        const row = byAlias.get(c.alias);
        if (!row) throw new Error(`no row for ${c.alias}`);
        refreshes = 0;
        forgotten = [];
        const applied = await lifecycle.write(NOW, (w) =>
          w.transition(row, c.name, { status: c.to, lastError: c.alias }),
        );
        outcomes.set(c.alias, { applied, refreshes, forgotten });
      }

      const [instances, routes, events] = await Promise.all([
        db.db.select().from(schema.instances),
        db.db.select().from(schema.routes),
        db.db.select().from(schema.events).orderBy(asc(schema.events.id)),
      ]);
      const instanceOf = new Map(instances.map((i) => [i.alias, i]));
      const routeOfAlias = new Map(routes.map((r) => [r.alias, r]));
      const wrong: string[] = [];
      for (const { name, from, to, alias } of cases) {
        const allowedHere = spec(name).from.includes(from) && spec(name).to.includes(to);
        const after = instanceOf.get(alias);
        const wasServed = from === "ready";
        const served = to === "ready";
        const recorded = from !== to || spec(name).note !== undefined;
        const expected = allowedHere
          ? {
              applied: true,
              status: to,
              lastError: alias,
              updatedAt: NOW.getTime(),
              routeReady: served,
              events: recorded ? [spec(name).event.replace("<to>", to)] : [],
              failures: recorded && to === "failed" ? 1 : 0,
              refreshes: wasServed !== served ? 1 : 0,
              forgotten: spec(name).by === "agent-report" ? [] : ["w1"],
            }
          : {
              applied: false,
              status: from,
              lastError: null,
              updatedAt: T0.getTime(),
              routeReady: wasServed,
              events: [],
              failures: 0,
              refreshes: 0,
              forgotten: [],
            };
        const actual = {
          ...outcomes.get(alias),
          status: after?.status,
          lastError: after?.lastError ?? null,
          updatedAt: after?.updatedAt.getTime(),
          routeReady: routeOfAlias.get(alias)?.ready,
          events: events.filter((e) => e.alias === alias).map((e) => e.kind),
          failures: after?.failures,
        };
        const order = (o: Record<string, unknown>) =>
          JSON.stringify(
            Object.keys(o)
              .sort()
              .map((k) => [k, o[k]]),
          );
        if (order(actual) !== order(expected)) {
          wrong.push(`${name} ${from} -> ${to}: got ${order(actual)}, wanted ${order(expected)}`);
        }
      }
      expect(wrong).toEqual([]);
      await db.db.delete(schema.models).where(like(schema.models.alias, "case-%"));
    }, 60_000);

    test("a row another writer moved first is left alone", async () => {
      const stale = await seed("pending");
      await lifecycle.write(NOW, (w) => w.reported(stale, { status: "ready", port: 8000 }));
      const applied = await lifecycle.write(NOW, (w) => w.launchFailed(stale, "agent timed out"));
      expect(applied).toBe(false);
      const [row] = await instanceRows();
      expect([row?.status, row?.lastError]).toEqual(["ready", null]);
      expect((await routeOf(stale.id))?.ready).toBe(true);
      expect((await eventsOf(stale.id)).map((e) => e.kind)).toEqual(["instance.ready"]);
    });

    test("a restart unserves the route at once, counts from the agent's reply, and a failed one goes back as it was", async () => {
      const ready = await seed("ready");
      const claimed = await lifecycle.write(NOW, (w) =>
        w.restarted(ready, { requested_by: "ops" }, "restart requested by ops"),
      );
      expect(claimed).toBe(true);
      expect((await routeOf(ready.id))?.ready).toBe(false);
      const [stopping] = await instanceRows();
      if (!stopping) throw new Error("no row");
      expect(stopping.status).toBe("stopping");
      // A second restart of the same row finds it stopping: the table refuses it.
      expect(await lifecycle.write(NOW, (w) => w.restarted(ready, {}, "again"))).toBe(false);
      // The reply counts the restart and takes nothing else (a later heartbeat may know more).
      const reply = { ...report("stopping"), restarts: 1 };
      expect(await lifecycle.write(NOW, (w) => w.restartAccepted(stopping, reply))).toBe(true);
      const [counted] = await instanceRows();
      expect([counted?.status, counted?.restarts, counted?.pid, counted?.port]).toEqual([
        "stopping",
        1,
        42,
        8000,
      ]);
      if (!counted) throw new Error("no row");
      expect(await lifecycle.write(NOW, (w) => w.restartAccepted(counted, reply))).toBe(false);
      // An agent that did not take it: ready again, served again, ready since as before.
      expect(
        await lifecycle.write(NOW, (w) => w.restartFailed(counted, "ready", "agent unreachable")),
      ).toBe(true);
      const [back] = await instanceRows();
      expect([back?.status, back?.readyAt?.getTime()]).toEqual(["ready", T0.getTime()]);
      expect((await routeOf(ready.id))?.ready).toBe(true);
      const events = await eventsOf(ready.id);
      expect(events.map((e) => [e.kind, e.fromStatus, e.toStatus, e.message])).toEqual([
        ["instance.restarted", "ready", "stopping", "restart requested by ops"],
        ["instance.restart_failed", "stopping", "ready", "agent unreachable"],
      ]);
      expect(events[0]?.detail).toEqual({ requested_by: "ops" });
    });

    test("a route is served only while its instance is ready and its worker online", async () => {
      const offline = await seed("starting", "w3");
      await lifecycle.write(NOW, (w) => w.reported(offline, { status: "ready", port: 8001 }));
      const route = await routeOf(offline.id);
      expect([route?.ready, route?.vllmPort]).toEqual([false, 8001]);
      await db.db
        .update(schema.workers)
        .set({ status: "online" })
        .where(eq(schema.workers.workerId, "w3"));
      const [ready] = await instanceRows();
      if (!ready) throw new Error("no row");
      await lifecycle.write(NOW, async (w) => {
        w.workerOnline("w3", "offline");
        await w.reported(ready, { status: "ready", port: 8001 });
      });
      expect((await routeOf(offline.id))?.ready).toBe(true);
      const lost = await lifecycle.write(NOW, async (w) => {
        await w.tx
          .update(schema.workers)
          .set({ status: "offline" })
          .where(eq(schema.workers.workerId, "w3"));
        return w.workerOffline("w3", "no heartbeat");
      });
      expect(lost.map((i) => i.id)).toEqual([offline.id]);
      expect((await routeOf(offline.id))?.ready).toBe(false);
      const [row] = await instanceRows();
      expect(row?.status).toBe("lost");
      expect(forgotten).toContain("w3");
    });

    test("a retry moves the route to its new worker, through its public URL", async () => {
      const failed = await seed("failed");
      const moved = await lifecycle.write(NOW, (w) =>
        w.retried(failed, { workerId: "w2", gpuIds: [1] }),
      );
      expect(moved).toBe(true);
      const [row] = await instanceRows();
      expect([row?.status, row?.workerId, row?.gpuIds, row?.port, row?.pid]).toEqual([
        "pending",
        "w2",
        [1],
        null,
        null,
      ]);
      const route = await routeOf(failed.id);
      expect([route?.workerId, route?.workerUrl, route?.vllmPort, route?.ready]).toEqual([
        "w2",
        "https://w2.example:8443",
        null,
        false,
      ]);
      expect(forgotten.sort()).toEqual(["w1", "w2"]);
      const [event] = await eventsOf(failed.id);
      expect([event?.kind, event?.workerId, event?.fromStatus, event?.toStatus]).toEqual([
        "instance.retry",
        "w2",
        "failed",
        "pending",
      ]);
    });

    test("placed and adopted insert rows with their routes; adoption takes live engines only", async () => {
      const placed = await lifecycle.write(NOW, (w) =>
        w.placed(model, [{ workerId: "w2", gpuIds: [0] }]),
      );
      expect(placed.map((i) => [i.workerId, i.status])).toEqual([["w2", "pending"]]);
      const placedRoute = await routeOf(placed[0]?.id ?? "");
      expect([placedRoute?.workerUrl, placedRoute?.ready]).toEqual([
        "https://w2.example:8443",
        false,
      ]);
      expect(forgotten).toEqual(["w2"]);
      expect(refreshes).toBe(1);

      const [w1] = await db.db
        .select()
        .from(schema.workers)
        .where(eq(schema.workers.workerId, "w1"));
      if (!w1) throw new Error("no worker");
      for (const status of ["failed", "stopping", "stopped"] as const) {
        const refused = await lifecycle.write(NOW, (w) => w.adopted(w1, model, report(status)));
        expect([status, refused]).toEqual([status, undefined]);
      }
      forgotten = [];
      const adopted = await lifecycle.write(NOW, (w) => w.adopted(w1, model, report("ready")));
      expect([adopted?.status, adopted?.port, adopted?.pid]).toEqual(["ready", 8100, 7]);
      const adoptedRoute = await routeOf(adopted?.id ?? "");
      expect([adoptedRoute?.ready, adoptedRoute?.vllmPort]).toEqual([true, 8100]);
      expect(forgotten).toEqual([]);
      const kinds = await db.db
        .select({ kind: schema.events.kind })
        .from(schema.events)
        .where(eq(schema.events.alias, "m"))
        .orderBy(asc(schema.events.id));
      expect(kinds.map((e) => e.kind).slice(-2)).toEqual(["instance.placed", "instance.adopted"]);
    });

    test("rescheduled replaces a lost row and nothing else", async () => {
      for (const status of instanceRecordStatuses) {
        await db.db.delete(schema.instances);
        const row = await seed(status);
        const created = await lifecycle.write(NOW, (w) =>
          w.rescheduled(row, model, { workerId: "w2", gpuIds: [0] }),
        );
        const rows = await instanceRows();
        if (status === "lost") {
          expect(rows.map((i) => [i.workerId, i.status])).toEqual([["w2", "pending"]]);
          expect(created?.id).toBe(rows[0]?.id ?? "");
          expect(await routeOf(row.id)).toBeUndefined();
          expect((await routeOf(created?.id ?? ""))?.workerId).toBe("w2");
          const [event] = await eventsOf(created?.id ?? "");
          expect([event?.kind, event?.fromStatus, event?.toStatus]).toEqual([
            "instance.rescheduled",
            "lost",
            "pending",
          ]);
        } else {
          expect([status, created, rows.map((i) => [i.workerId, i.status])]).toEqual([
            status,
            undefined,
            [["w1", status]],
          ]);
        }
      }
    });

    test("dropped removes a lost row with its route, and nothing else", async () => {
      for (const status of instanceRecordStatuses) {
        await db.db.delete(schema.instances);
        const row = await seed(status);
        refreshes = 0;
        const applied = await lifecycle.write(NOW, (w) => w.dropped(row, "worker w1 was removed"));
        const rows = await instanceRows();
        if (status === "lost") {
          expect([applied, rows, await routeOf(row.id), refreshes]).toEqual([
            true,
            [],
            undefined,
            1,
          ]);
          const [event] = await eventsOf(row.id);
          expect([event?.kind, event?.fromStatus, event?.toStatus, event?.message]).toEqual([
            "instance.dropped",
            "lost",
            null,
            "worker w1 was removed",
          ]);
        } else {
          expect([status, applied, rows.map((i) => i.status)]).toEqual([status, false, [status]]);
        }
      }
    });

    test("removed takes every row of the alias with its route and records model.deleted", async () => {
      const a = await seed("ready", "w1");
      await seed("failed", "w2");
      const targets = await lifecycle.write(NOW, (w) => w.removed("m"));
      expect(targets.map((t) => [t.workerId, t.workerUrl]).sort()).toEqual([
        ["w1", "http://10.0.0.1:6006"],
        ["w2", "http://10.0.0.2:6006"],
      ]);
      expect(await instanceRows()).toEqual([]);
      expect(await routeOf(a.id)).toBeUndefined();
      expect(forgotten.sort()).toEqual(["w1", "w2"]);
      expect(refreshes).toBe(1);
      const deleted = await db.db
        .select()
        .from(schema.events)
        .where(eq(schema.events.kind, "model.deleted"));
      expect(deleted.map((e) => e.alias)).toEqual(["m"]);
    });

    test("when the caller throws, nothing is written and no cache changes", async () => {
      const row = await seed("ready");
      const attempt = lifecycle.write(NOW, async (w) => {
        await w.lost(row);
        throw new Error("placement refused");
      });
      await expect(attempt).rejects.toThrow("placement refused");
      const [after] = await instanceRows();
      expect(after?.status).toBe("ready");
      expect((await routeOf(row.id))?.ready).toBe(true);
      expect(await eventsOf(row.id)).toEqual([]);
      expect([refreshes, forgotten]).toEqual([0, []]);
    });
  });
}
