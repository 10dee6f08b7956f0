import { pgTable, text, timestamp } from "drizzle-orm/pg-core";

/**
 * Credentials of standalone and edge routers (`fleet routers create NAME`): they read the
 * route snapshot and post usage, nothing else. Only the SHA-256 of a credential is stored.
 */
export const routers = pgTable("routers", {
  id: text().primaryKey(),
  name: text().notNull().unique("routers_name_unique"),
  tokenHash: text().notNull().unique("routers_token_hash_unique"),
  /** The first characters of the credential, to tell them apart in lists. */
  prefix: text().notNull(),
  createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  /** Last time the credential was presented (updated at most once a minute). */
  lastUsedAt: timestamp({ withTimezone: true }),
  revokedAt: timestamp({ withTimezone: true }),
});

export type RouterRow = typeof routers.$inferSelect;
