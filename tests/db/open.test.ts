import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import { createDb } from "../../db/index.ts";
import { freePort } from "../../devkit/net.ts";
import { bunBin, startProcess } from "../../devkit/proc.ts";

const scratch = mkdtempSync(join(tmpdir(), "fleet-open-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

async function runMigrate(env: Record<string, string | undefined>) {
  const service = startProcess([bunBin, "db/migrate.ts"], { env });
  const code = await service.exited();
  return { code, output: service.output() };
}

describe("createDb", () => {
  test("an unreachable DATABASE_URL fails fast, naming host and port", async () => {
    const port = await freePort();
    const started = Date.now();
    const result = createDb({ url: `postgres://postgres@127.0.0.1:${port}/fleet` });
    await expect(result).rejects.toThrow(`127.0.0.1:${port}`);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  test("a FLEET_DATA_DIR that cannot be written is named in the error", async () => {
    const file = join(scratch, "not-a-dir");
    writeFileSync(file, "");
    await expect(createDb({ dataDir: join(file, "data") })).rejects.toThrow(
      `FLEET_DATA_DIR ${file}/data`,
    );
  });

  test("the embedded database keeps its data across reopen and refuses a second opener", async () => {
    const dir = join(scratch, "persist");
    const first = await createDb({ dataDir: dir });
    await first.migrate();
    await first.db.insert((await import("../../db/index.ts")).schema.models).values({
      alias: "kept",
      modelName: "org/kept",
    });
    // A second process would corrupt PGlite's files; the pid lock turns that into an error.
    const second = await runMigrate({ DATABASE_URL: "", FLEET_DATA_DIR: dir });
    expect(second.code).toBe(1);
    expect(second.output).toContain("is in use by process");
    await first.close();

    const reopened = await createDb({ dataDir: dir });
    const rows = await reopened.query<{ alias: string }>(sql`select alias from models`);
    expect(rows.map((row) => row.alias)).toEqual(["kept"]);
    await reopened.close();
  });
});

describe("npm run db:migrate", () => {
  test("applies migrations to FLEET_DATA_DIR, and again as a no-op", async () => {
    const dir = join(scratch, "cli");
    const env = { DATABASE_URL: "", FLEET_DATA_DIR: dir };
    const first = await runMigrate(env);
    expect(first.output).toContain(`migrations applied to pglite at ${dir}`);
    expect(first.code).toBe(0);
    const again = await runMigrate(env);
    expect(again.code).toBe(0);

    const fleet = await createDb({ dataDir: dir });
    const rows = await fleet.query<{ n: number }>(sql`select count(*)::int as n from route_table`);
    expect(rows[0]?.n).toBe(0);
    await fleet.close();
  });

  test("a malformed DATABASE_URL is refused by name", async () => {
    const result = await runMigrate({ DATABASE_URL: "mysql://localhost/fleet" });
    expect(result.code).toBe(1);
    expect(result.output).toContain("DATABASE_URL must be a postgres:// or postgresql:// URL");
  });
});

describe.if(Boolean(process.env.DATABASE_URL))("migration on a shared Postgres", () => {
  test("managers starting together migrate once", async () => {
    const { createTestDatabase } = await import("../../devkit/db.ts");
    const database = await createTestDatabase("postgres");
    try {
      const replicas = await Promise.all(
        [1, 2, 3, 4].map(() => createDb({ url: database.env.DATABASE_URL })),
      );
      await Promise.all(replicas.map((replica) => replica.migrate()));
      const first = replicas[0];
      if (!first) throw new Error("no replica");
      const rows = await first.query<{ n: number }>(
        sql`select count(*)::int as n from drizzle.__drizzle_migrations`,
      );
      const journal = await Bun.file("db/migrations/meta/_journal.json").json();
      expect(rows[0]?.n).toBe(journal.entries.length);
      const state = await first.query<{ n: number }>(
        sql`select count(*)::int as n from fleet_state`,
      );
      expect(state[0]?.n).toBe(1);
      await Promise.all(replicas.map((replica) => replica.close()));
    } finally {
      await database.destroy();
    }
  });
});
