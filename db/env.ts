import { z } from "zod";

/** The database part of every service's environment; services spread it into their schema. */
export const dbEnvShape = {
  DATABASE_URL: z
    .string()
    .trim()
    .refine(
      isPostgresUrl,
      "must be a postgres:// or postgresql:// URL, e.g. postgres://user@127.0.0.1:5432/fleet",
    )
    .optional()
    .or(z.literal("").transform(() => undefined)),
  FLEET_DATA_DIR: z.string().trim().min(1).default(".fleet"),
};

function isPostgresUrl(value: string): boolean {
  if (!URL.canParse(value)) return false;
  const url = new URL(value);
  return (url.protocol === "postgres:" || url.protocol === "postgresql:") && url.hostname !== "";
}
