/**
 * `npm run db:migrate`: applies the committed migrations to DATABASE_URL, or to the
 * embedded database under FLEET_DATA_DIR. Running it again is a no-op.
 */
import { z } from "zod";
import { parseEnv } from "../kit/env.ts";
import { createDb } from "./client.ts";
import { dbEnvShape } from "./env.ts";

try {
  const env = parseEnv(z.object(dbEnvShape), process.env);
  const fleetDb = await createDb({ url: env.DATABASE_URL, dataDir: env.FLEET_DATA_DIR });
  try {
    await fleetDb.migrate();
    console.log(`migrations applied to ${fleetDb.kind} at ${fleetDb.location}`);
  } finally {
    await fleetDb.close();
  }
} catch (error) {
  console.error(`db:migrate: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
}
