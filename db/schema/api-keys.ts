import { index, pgTable, text, timestamp } from "drizzle-orm/pg-core";

/** Keys for the OpenAI surface. Only the SHA-256 of a key is ever stored. */
export const apiKeys = pgTable(
  "api_keys",
  {
    id: text().primaryKey(),
    keyHash: text().notNull().unique("api_keys_key_hash_unique"),
    /** The first characters of the key, to tell keys apart in lists. */
    prefix: text().notNull(),
    name: text().notNull(),
    createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    revokedAt: timestamp({ withTimezone: true }),
  },
  (t) => [index("api_keys_revoked_at_idx").on(t.revokedAt)],
);
