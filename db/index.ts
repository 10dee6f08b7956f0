/**
 * The data layer: `createDb` opens Postgres (DATABASE_URL) or the embedded PGlite database
 * (FLEET_DATA_DIR) behind one Drizzle handle; `schema` holds the tables operators query.
 */
export {
  type CreateDbOptions,
  createDb,
  DatabaseError,
  type Db,
  type FleetDb,
  pgliteExists,
  type Schema,
} from "./client.ts";
export { dbEnvShape } from "./env.ts";
export * as schema from "./schema/index.ts";
