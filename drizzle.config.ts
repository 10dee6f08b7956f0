import { defineConfig } from "drizzle-kit";

// Migrations are generated, never pushed: `npm run db:generate -- --name verb_noun`.
export default defineConfig({
  dialect: "postgresql",
  schema: "./db/schema/index.ts",
  out: "./db/migrations",
  casing: "snake_case",
});
