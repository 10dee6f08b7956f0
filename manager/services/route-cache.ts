import { asc, eq, isNull } from "drizzle-orm";
import { type FleetDb, schema } from "../../db/index.ts";
import { describeError } from "../../kit/errors.ts";
import type { Logger } from "../../kit/log.ts";
import type { RouteSnapshot } from "../../protocol/index.ts";
import { routingRecord } from "./wire.ts";

export type CachedSnapshot = { snapshot: RouteSnapshot; etag: string; body: string };

/**
 * The route snapshot, rebuilt from the database only when `fleet_state` says it changed
 * (triggers bump `routes_version` on every write to routes, worker status/URLs and keys;
 * revoking a router credential bumps it too, so that managers forget the credential).
 * A cheap version poll keeps it fresh when another manager replica writes; this process
 * calls `refresh()` after its own writes. `current()` is synchronous: the in-process
 * router reads it on every request, and `GET /v1/routes` serves its pre-serialized body.
 */
export class RouteCache {
  private cached: CachedSnapshot | undefined;
  private versionKey: string | undefined;
  private running: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  /** When the database last answered the version check, and why the last check failed. */
  private confirmedAt: number | undefined;
  private failure: string | undefined;

  constructor(private readonly options: { fleetDb: FleetDb; log: Logger; pollMs: number }) {}

  current(): RouteSnapshot | undefined {
    return this.cached?.snapshot;
  }

  entry(): CachedSnapshot | undefined {
    return this.cached;
  }

  /** For the mounted router's /healthz: the snapshot's age, and the database's failure. */
  health(): { ageS: number | null; problem?: string } {
    const ageS = this.confirmedAt === undefined ? null : (Date.now() - this.confirmedAt) / 1000;
    return this.failure ? { ageS, problem: `database unreachable: ${this.failure}` } : { ageS };
  }

  /**
   * Checks the version and reloads if it moved. A call made while a check runs queues one
   * more, so a caller that just wrote always gets a check that started after its write.
   */
  refresh(): Promise<void> {
    if (this.queued) return this.queued;
    if (this.running) {
      this.queued = this.running.then(() => {
        this.queued = undefined;
        return this.refresh();
      });
      return this.queued;
    }
    this.running = this.load().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.refresh(), this.options.pollMs);
    (this.timer as { unref?: () => void }).unref?.();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private confirmed(): void {
    this.confirmedAt = Date.now();
    this.failure = undefined;
  }

  private async load(): Promise<void> {
    const { db } = this.options.fleetDb;
    try {
      const [state] = await db
        .select({ epoch: schema.fleetState.epoch, version: schema.fleetState.routesVersion })
        .from(schema.fleetState)
        .where(eq(schema.fleetState.id, 1));
      if (!state) return;
      const key = `${state.epoch.slice(0, 8)}-${state.version}`;
      if (key === this.versionKey) return this.confirmed();
      // Read after the version: the rows are at least as new as the version they carry.
      const [rows, keys] = await Promise.all([
        db
          .select({
            route: schema.routes,
            workerStatus: schema.workers.status,
            agentToken: schema.workers.agentToken,
            maxModelLen: schema.models.maxModelLen,
            routing: schema.models.routing,
          })
          .from(schema.routes)
          .innerJoin(schema.workers, eq(schema.workers.workerId, schema.routes.workerId))
          // A model's context length and routing never change after it is registered (routes do).
          .innerJoin(schema.models, eq(schema.models.alias, schema.routes.alias))
          .orderBy(asc(schema.routes.alias), asc(schema.routes.workerId)),
        db
          .select({ id: schema.apiKeys.id, key_hash: schema.apiKeys.keyHash })
          .from(schema.apiKeys)
          .where(isNull(schema.apiKeys.revokedAt))
          .orderBy(asc(schema.apiKeys.id)),
      ]);
      const snapshot: RouteSnapshot = {
        version: key,
        routes: rows.map(({ route, workerStatus, agentToken, maxModelLen, routing }) => ({
          ...routingRecord(route),
          instance_id: route.instanceId,
          ready: route.ready && workerStatus === "online",
          // Each route carries its own worker's agent credential, so a router sends every
          // worker a secret that works there alone (a rotation bumps the version).
          agent_token: agentToken,
          max_model_len: maxModelLen,
          routing,
        })),
        api_keys: keys,
      };
      this.cached = { snapshot, etag: `"${key}"`, body: JSON.stringify(snapshot) };
      this.versionKey = key;
      this.confirmed();
    } catch (error) {
      this.failure = describeError(error).slice(0, 200);
      // Keep serving the last snapshot; the next poll tries again.
      this.options.log.warn("route snapshot refresh failed", { error: describeError(error) });
    }
  }
}
