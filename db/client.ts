import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { PGlite, type PGliteOptions } from "@electric-sql/pglite";
import type { SQL } from "drizzle-orm";
import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { migrate as migratePglite } from "drizzle-orm/pglite/migrator";
import { drizzle as drizzlePostgres } from "drizzle-orm/postgres-js";
import { migrate as migratePostgres } from "drizzle-orm/postgres-js/migrator";
import postgres from "postgres";
import * as schema from "./schema/index.ts";

export type Schema = typeof schema;
/** The Drizzle handle: the same query code runs over postgres.js and PGlite. */
export type Db = PgDatabase<PgQueryResultHKT, Schema>;

export type FleetDb = {
  db: Db;
  kind: "postgres" | "pglite";
  /** Where it lives, for logs: `postgres://host:port/db` (no password) or the data directory. */
  location: string;
  /** Applies the committed migrations under an advisory lock; a no-op when up to date. */
  migrate(): Promise<void>;
  /**
   * Runs `fn` only if this process wins the advisory lock `key` (several manager replicas
   * share one database; one acts at a time). Returns `undefined` when another holds it.
   */
  tryWithLock<T>(key: bigint, fn: () => Promise<T>): Promise<T | undefined>;
  /** Runs one raw statement and returns its rows, whatever the driver. */
  query<T extends Record<string, unknown>>(statement: SQL): Promise<T[]>;
  close(): Promise<void>;
};

export type CreateDbOptions = {
  /** `DATABASE_URL`; when absent the embedded PGlite database is used. */
  url?: string | undefined;
  /** `FLEET_DATA_DIR` for PGlite (default `.fleet`); `memory://` keeps it in memory. */
  dataDir?: string | undefined;
  /** Pool size for postgres.js (default 10). */
  maxConnections?: number;
  /** Seconds to wait for Postgres before failing (default 10). */
  connectTimeoutS?: number;
  /**
   * PGlite's own files, handed over by a single executable that embeds them
   * (runtime/pglite-files.ts); PGlite otherwise reads them beside its module.
   */
  pgliteFiles?: Pick<PGliteOptions, "pgliteWasmModule" | "initdbWasmModule" | "fsBundle">;
};

// In a single executable this module's directory is the bundle's root, where
// `npm run build:manager` embeds db/migrations as `migrations` (bin/build.ts).
const migrationsFolder = resolve(import.meta.dirname, "migrations");
/** Advisory lock key for migrations (a fixed 64-bit number unique to vllm-fleet). */
const MIGRATION_LOCK = 0x766c6c6d_6d696772n; // "vllmmigr"

export class DatabaseError extends Error {
  override name = "DatabaseError";
}

/** Opens Postgres at `url`, or the embedded PGlite database under `dataDir`. */
export async function createDb(options: CreateDbOptions = {}): Promise<FleetDb> {
  return options.url
    ? openPostgres(options.url, options)
    : openPglite(options.dataDir ?? ".fleet", options.pgliteFiles ?? {});
}

async function openPostgres(url: string, options: CreateDbOptions): Promise<FleetDb> {
  const parsed = new URL(url);
  const hostPort = `${parsed.hostname}:${parsed.port || "5432"}`;
  const location = `postgres://${hostPort}${parsed.pathname}`;
  const connectTimeoutS = options.connectTimeoutS ?? 10;
  const clientOptions = {
    max: options.maxConnections ?? 10,
    connect_timeout: connectTimeoutS,
    onnotice: () => {},
  };
  const client = postgres(url, clientOptions);
  try {
    // Fail now, naming the server, rather than on the first request.
    await withTimeout(client`select 1`, connectTimeoutS * 1000 + 1000);
  } catch (error) {
    await client.end({ timeout: 0 }).catch(() => {});
    throw new DatabaseError(
      `cannot connect to Postgres at ${hostPort} (DATABASE_URL): ${describe(error)}`,
    );
  }
  const db = drizzlePostgres({ client, schema, casing: "snake_case" });

  return {
    db,
    kind: "postgres",
    location,
    async migrate() {
      // A connection of its own: the session-level lock and drizzle's migration transaction
      // must share one connection, which a pool does not promise.
      const lockClient = postgres(url, { ...clientOptions, max: 1 });
      try {
        await lockClient`select pg_advisory_lock(${MIGRATION_LOCK.toString()}::bigint)`;
        await migratePostgres(drizzlePostgres({ client: lockClient, casing: "snake_case" }), {
          migrationsFolder,
        });
        await lockClient`select pg_advisory_unlock(${MIGRATION_LOCK.toString()}::bigint)`;
      } finally {
        await lockClient.end({ timeout: 5 });
      }
    },
    async tryWithLock(key, fn) {
      const reserved = await client.reserve();
      try {
        const [row] = await reserved<{ locked: boolean }[]>`
          select pg_try_advisory_lock(${key.toString()}::bigint) as locked`;
        if (!row?.locked) return undefined;
        try {
          return await fn();
        } finally {
          await reserved`select pg_advisory_unlock(${key.toString()}::bigint)`;
        }
      } finally {
        reserved.release();
      }
    },
    async query<T extends Record<string, unknown>>(statement: SQL) {
      const rows = await db.execute(statement);
      return [...rows] as T[];
    },
    async close() {
      await client.end({ timeout: 5 });
    },
  };
}

async function openPglite(
  dataDir: string,
  files: NonNullable<CreateDbOptions["pgliteFiles"]>,
): Promise<FleetDb> {
  const inMemory = dataDir.startsWith("memory://");
  let release = () => {};
  let location = dataDir;
  let client: PGlite;
  if (inMemory) {
    client = await PGlite.create(files);
  } else {
    const dir = resolve(dataDir);
    location = dir;
    try {
      mkdirSync(dir, { recursive: true });
      const probe = join(dir, ".write-test");
      writeFileSync(probe, "");
      rmSync(probe);
    } catch (error) {
      throw new DatabaseError(`FLEET_DATA_DIR ${dir} is not writable: ${describe(error)}`);
    }
    release = lockDataDir(dir);
    try {
      client = await PGlite.create(join(dir, "pg"), files);
    } catch (error) {
      release();
      throw new DatabaseError(
        `cannot open the embedded database in FLEET_DATA_DIR ${dir}: ${describe(error)}`,
      );
    }
  }
  const db = drizzlePglite({ client, schema, casing: "snake_case" });
  // PGlite is one connection in this process: a lock here only orders this process's own
  // loops, which is all that can share it.
  let locked = false;

  return {
    db,
    kind: "pglite",
    location,
    async migrate() {
      await migratePglite(drizzlePglite({ client, casing: "snake_case" }), { migrationsFolder });
    },
    async tryWithLock(_key, fn) {
      if (locked) return undefined;
      locked = true;
      try {
        return await fn();
      } finally {
        locked = false;
      }
    },
    async query<T extends Record<string, unknown>>(statement: SQL) {
      const result = await db.execute(statement);
      return (result as unknown as { rows: T[] }).rows;
    },
    async close() {
      await client.close();
      release();
    },
  };
}

/**
 * Whether the embedded database under `dataDir` has been created already: the first start
 * creates it (initdb), which takes from seconds to a minute, and the manager says so.
 */
export function pgliteExists(dataDir: string): boolean {
  return existsSync(join(resolve(dataDir), "pg", "PG_VERSION"));
}

/**
 * PGlite's files may be opened by one process only; a second manager on the same directory
 * would corrupt them. A pid file makes that a clear error instead.
 */
function lockDataDir(dir: string): () => void {
  const lockPath = join(dir, "pg.lock");
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(lockPath, "wx");
      writeFileSync(fd, String(process.pid));
      closeSync(fd);
      return () => rmSync(lockPath, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const pid = Number(readFileSync(lockPath, "utf8"));
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) {
        throw new DatabaseError(
          `FLEET_DATA_DIR ${dir} is in use by process ${pid}; the embedded database takes one process (set DATABASE_URL to share a database between managers)`,
        );
      }
      rmSync(lockPath, { force: true }); // stale: its process is gone
    }
  }
  throw new DatabaseError(`cannot lock FLEET_DATA_DIR ${dir}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code && !error.message.includes(code) ? `${code} ${error.message}` : error.message;
  }
  return String(error);
}
