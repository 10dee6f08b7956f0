import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { createDb, type FleetDb } from "../db/index.ts";

export type DbTarget = "pglite" | "postgres";

const serverUrl = () => process.env.DATABASE_URL || undefined;

/** Data-layer tests run on every target: PGlite always, Postgres too when DATABASE_URL is set. */
export const dbTargets: DbTarget[] = serverUrl() ? ["pglite", "postgres"] : ["pglite"];

/** The one target for tests of services: real Postgres when DATABASE_URL is set. */
export const serviceDbTarget: DbTarget = serverUrl() ? "postgres" : "pglite";

export type TestDatabase = {
  target: DbTarget;
  /** The environment a spawned service needs to open this database. */
  env: { DATABASE_URL?: string; FLEET_DATA_DIR?: string };
  /** Drops it (Postgres) or removes its directory (PGlite). */
  destroy(): Promise<void>;
};

/**
 * A database of its own for one test file: a new database on the Postgres server, or a new
 * PGlite directory. Migrations are not applied: the service (or `openFreshDb`) does that.
 */
export async function createTestDatabase(
  target: DbTarget = serviceDbTarget,
): Promise<TestDatabase> {
  if (target === "pglite") {
    const dir = mkdtempSync(join(tmpdir(), "fleet-test-"));
    return {
      target,
      env: { FLEET_DATA_DIR: dir },
      async destroy() {
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  const server = serverUrl();
  if (!server) throw new Error("DATABASE_URL is not set");
  const name = `fleet_test_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
  const admin = postgres(server, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database "${name}"`);
  await admin.end();
  const url = new URL(server);
  url.pathname = `/${name}`;
  return {
    target,
    env: { DATABASE_URL: url.toString() },
    async destroy() {
      const dropper = postgres(server, { max: 1, onnotice: () => {} });
      await dropper.unsafe(`drop database if exists "${name}" with (force)`);
      await dropper.end();
    },
  };
}

export type OpenTestDb = FleetDb & { database: TestDatabase; destroy(): Promise<void> };

/** A migrated database, opened in this process: in-memory PGlite or a fresh Postgres database. */
export async function openFreshDb(target: DbTarget = serviceDbTarget): Promise<OpenTestDb> {
  const database =
    target === "pglite"
      ? ({ target, env: {}, destroy: async () => {} } satisfies TestDatabase)
      : await createTestDatabase(target);
  const handle = await createDb(
    target === "pglite" ? { dataDir: "memory://" } : { url: database.env.DATABASE_URL },
  );
  await handle.migrate();
  return Object.assign(handle, {
    database,
    async destroy() {
      await handle.close();
      await database.destroy();
    },
  });
}
