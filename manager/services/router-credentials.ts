import { and, asc, eq, isNull, lte, or } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import type { Clock } from "../../kit/clock.ts";
import { randomToken, sha256Hex } from "../../kit/crypto.ts";
import { AppError } from "../../kit/errors.ts";
import type { RouterInfo } from "../../protocol/index.ts";

/**
 * Router credentials (`routers` table): what standalone and edge routers present to read the
 * route snapshot and post usage. A credential is `fr_` + 256 random bits, shown once; the
 * database keeps its SHA-256 only, so checking one is a lookup of the presented value's hash
 * (no comparison whose timing depends on the secret).
 */
type Deps = { db: Db; clock: Clock };
type RouterRow = typeof schema.routers.$inferSelect;

/** Every credential starts with this; anything else is refused without a query. */
export const routerTokenPrefix = "fr_";

/** `last_used_at` is written at most this often per credential (a router polls every second). */
const touchEveryMs = 60_000;

export async function createRouterCredential(
  deps: Deps,
  name: string,
): Promise<{ info: RouterInfo; token: string }> {
  const token = randomToken(routerTokenPrefix);
  // The unique name decides a race between two creates; no read before the write.
  const [row] = await deps.db
    .insert(schema.routers)
    .values({
      id: randomToken("rtr_", 9),
      name,
      tokenHash: await sha256Hex(token),
      prefix: token.slice(0, routerTokenPrefix.length + 8),
      createdAt: deps.clock.now(),
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

export async function listRouterCredentials(deps: Deps): Promise<RouterInfo[]> {
  const rows = await deps.db
    .select()
    .from(schema.routers)
    .orderBy(asc(schema.routers.createdAt), asc(schema.routers.id));
  return rows.map(routerInfo);
}

/** Revokes at once: the next request that presents it is refused. 404 unknown, 409 already. */
export async function revokeRouterCredential(deps: Deps, id: string): Promise<RouterInfo> {
  const [row] = await deps.db
    .update(schema.routers)
    .set({ revokedAt: deps.clock.now() })
    .where(and(eq(schema.routers.id, id), isNull(schema.routers.revokedAt)))
    .returning();
  if (row) return routerInfo(row);
  const [existing] = await deps.db
    .select({ revokedAt: schema.routers.revokedAt })
    .from(schema.routers)
    .where(eq(schema.routers.id, id));
  if (!existing)
    throw new AppError("not_found", `no router credential with id ${id}`, { param: "id" });
  throw new AppError(
    "conflict",
    `router credential ${id} was already revoked at ${existing.revokedAt?.toISOString()}`,
    { param: "id" },
  );
}

export type RouterCheck = { ok: true; id: string } | { ok: false; revoked: boolean };

/**
 * Checks a presented bearer token against the table (every request: a revocation, by this
 * manager or another on the same database, applies to the very next one). Marks the
 * credential used when its `last_used_at` is older than a minute.
 */
export async function checkRouterCredential(deps: Deps, presented: string): Promise<RouterCheck> {
  if (!presented.startsWith(routerTokenPrefix)) return { ok: false, revoked: false };
  const [row] = await deps.db
    .select({
      id: schema.routers.id,
      revokedAt: schema.routers.revokedAt,
      lastUsedAt: schema.routers.lastUsedAt,
    })
    .from(schema.routers)
    .where(eq(schema.routers.tokenHash, await sha256Hex(presented)));
  if (!row) return { ok: false, revoked: false };
  if (row.revokedAt) return { ok: false, revoked: true };
  const now = deps.clock.now();
  if (!row.lastUsedAt || now.getTime() - row.lastUsedAt.getTime() >= touchEveryMs) {
    // Conditional, so concurrent requests (or managers) write it once.
    const stale = new Date(now.getTime() - touchEveryMs);
    await deps.db
      .update(schema.routers)
      .set({ lastUsedAt: now })
      .where(
        and(
          eq(schema.routers.id, row.id),
          or(isNull(schema.routers.lastUsedAt), lte(schema.routers.lastUsedAt, stale)),
        ),
      );
  }
  return { ok: true, id: row.id };
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
