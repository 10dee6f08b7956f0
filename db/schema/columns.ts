import { timestamp } from "drizzle-orm/pg-core";

/** Timestamps every mutable table carries; always timestamptz, stamped by the database. */
export const timestamps = {
  createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
};
