import { and, asc, eq, isNull, lte, or, sql } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import type { Clock } from "../../kit/clock.ts";
import { randomToken, sha256Hex } from "../../kit/crypto.ts";
import { AppError } from "../../kit/errors.ts";
import type { RouterInfo } from "../../protocol/index.ts";

type RouterRow = typeof schema.routers.$inferSelect;

/** Every credential starts with this; anything else is refused without a query. */
export const routerTokenPrefix = "fr_";

/** `last_used_at` is written at most this often per credential (a router polls every second). */
const touchEveryMs = 60_000;

export type RouterCheck = { ok: true; id: string } | { ok: false; revoked: boolean };

/**
 * Router credentials (`routers` table): what standalone and edge routers present to read the
 * route snapshot and post usage. A credential is `fr_` + 256 random bits, shown once; the
 * database keeps its SHA-256 only, so checking one is a lookup of the presented value's hash
 * (no comparison whose timing depends on the secret).
 *
 * A router polls every second, and a database read per poll would cost the snapshot's 304
 * most of its speed (about 15,000 answers a second fall to 1,000-2,000 on a 2-core box), so
 * a successful check is remembered, by hash, while the route version stays the same and for
 * at most a minute (when `last_used_at` is due anyway). Revoking a credential forgets it
 * here at once and bumps the route version in the same transaction, which every other
 * manager on the database notices at its next version poll (`ROUTES_POLL_MS`).
 */
export class RouterCredentials {
  private readonly passed = new Map<string, { id: string; version: string; checkedAt: number }>();

  constructor(
    private readonly deps: {
      db: Db;
      clock: Clock;
      /** The route snapshot's version, which any revocation moves (RouteCache). */
      version(): string | undefined;
      /** Re-reads the version after a write of ours (RouteCache.refresh). */
      refresh(): Promise<void>;
    },
  ) {}

  async create(name: string): Promise<{ info: RouterInfo; token: string }> {
    const token = randomToken(routerTokenPrefix);
    // The unique name decides a race between two creates; no read before the write.
    const [row] = await this.deps.db
      .insert(schema.routers)
      .values({
        id: randomToken("rtr_", 9),
        name,
        tokenHash: await sha256Hex(token),
        prefix: token.slice(0, routerTokenPrefix.length + 8),
        createdAt: this.deps.clock.now(),
      })
      .onConflictDoNothing({ target: schema.routers.name })
      .returning();
    if (!row) {
      throw new AppError(
        "conflict",
        `a router credential named ${name} already exists (revoked ones keep their name): choose another name`,
        { param: "name" },
      );
    }
    return { info: routerInfo(row), token };
  }

  async list(): Promise<RouterInfo[]> {
    const rows = await this.deps.db
      .select()
      .from(schema.routers)
      .orderBy(asc(schema.routers.createdAt), asc(schema.routers.id));
    return rows.map(routerInfo);
  }

  /** Revokes at once: the next request that presents it is refused. 404 unknown, 409 already. */
  async revoke(id: string): Promise<RouterInfo> {
    const row = await this.deps.db.transaction(async (tx) => {
      const [revoked] = await tx
        .update(schema.routers)
        .set({ revokedAt: this.deps.clock.now() })
        .where(and(eq(schema.routers.id, id), isNull(schema.routers.revokedAt)))
        .returning();
      if (revoked) {
        // No trigger watches `routers` (its rows are not in the snapshot): bump by hand.
        await tx
          .update(schema.fleetState)
          .set({ routesVersion: sql`${schema.fleetState.routesVersion} + 1` })
          .where(eq(schema.fleetState.id, 1));
      }
      return revoked;
    });
    if (row) {
      for (const [hash, entry] of this.passed) if (entry.id === id) this.passed.delete(hash);
      await this.deps.refresh();
      return routerInfo(row);
    }
    const [existing] = await this.deps.db
      .select({ revokedAt: schema.routers.revokedAt })
      .from(schema.routers)
      .where(eq(schema.routers.id, id));
    if (!existing) {
      throw new AppError("not_found", `no router credential with id ${id}`, { param: "id" });
    }
    throw new AppError(
      "conflict",
      `router credential ${id} was already revoked at ${existing.revokedAt?.toISOString()}`,
      { param: "id" },
    );
  }

  /**
   * Checks a presented bearer token: a live credential's id, or why not. Marks the
   * credential used when its `last_used_at` is older than a minute.
   */
  async check(presented: string): Promise<RouterCheck> {
    if (!presented.startsWith(routerTokenPrefix)) return { ok: false, revoked: false };
    const hash = await sha256Hex(presented);
    const now = this.deps.clock.now().getTime();
    const version = this.deps.version();
    const known = this.passed.get(hash);
    if (known && known.version === version && now - known.checkedAt < touchEveryMs) {
      return { ok: true, id: known.id };
    }
    const [row] = await this.deps.db
      .select({
        id: schema.routers.id,
        revokedAt: schema.routers.revokedAt,
        lastUsedAt: schema.routers.lastUsedAt,
      })
      .from(schema.routers)
      .where(eq(schema.routers.tokenHash, hash));
    if (!row) return { ok: false, revoked: false };
    if (row.revokedAt) {
      this.passed.delete(hash);
      return { ok: false, revoked: true };
    }
    if (!row.lastUsedAt || now - row.lastUsedAt.getTime() >= touchEveryMs) {
      // Conditional, so concurrent requests (or managers) write it once.
      await this.deps.db
        .update(schema.routers)
        .set({ lastUsedAt: new Date(now) })
        .where(
          and(
            eq(schema.routers.id, row.id),
            or(
              isNull(schema.routers.lastUsedAt),
              lte(schema.routers.lastUsedAt, new Date(now - touchEveryMs)),
            ),
          ),
        );
    }
    if (version !== undefined) {
      // Entries of older versions are dead weight: the map holds the live credentials at most.
      for (const [other, entry] of this.passed) {
        if (entry.version !== version) this.passed.delete(other);
      }
      this.passed.set(hash, { id: row.id, version, checkedAt: now });
    }
    return { ok: true, id: row.id };
  }
}

function routerInfo(row: RouterRow): RouterInfo {
  return {
    id: row.id,
    name: row.name,
    prefix: row.prefix,
    created_at: row.createdAt.toISOString(),
    last_used_at: row.lastUsedAt?.toISOString() ?? null,
    revoked_at: row.revokedAt?.toISOString() ?? null,
  };
}
