import { asc, eq, sql } from "drizzle-orm";
import { Hono } from "hono";
import { schema } from "../../db/index.ts";
import { AppError, parseWith } from "../../kit/errors.ts";
import {
  type ApiKeyCreated,
  type ApiKeyInfo,
  type ApiKeyList,
  apiKeyCreateSchema,
} from "../../protocol/index.ts";
import { requireScope } from "../auth.ts";
import type { ManagerContext } from "../context.ts";

type KeyRow = typeof schema.apiKeys.$inferSelect;

/**
 * `/v1/keys` (ADMIN_TOKEN): API keys for the OpenAI surface. The key is shown once, in the
 * reply that creates it; the database keeps only its SHA-256 (hex) and a short prefix.
 */
export function keysRoutes(ctx: ManagerContext): Hono {
  const admin = requireScope(ctx.config, "admin");
  const app = new Hono();
  app.use("*", admin);

  app.post("/", async (c) => {
    const text = await c.req.text();
    const input = parseWith(apiKeyCreateSchema, text.trim() === "" ? {} : parseJson(text));
    const key = `sk-fleet-${base64url(crypto.getRandomValues(new Uint8Array(32)))}`;
    const [row] = await ctx.db
      .insert(schema.apiKeys)
      .values({
        id: `key_${base64url(crypto.getRandomValues(new Uint8Array(9)))}`,
        keyHash: await sha256Hex(key),
        prefix: key.slice(0, 13),
        name: input.name,
        createdAt: ctx.clock.now(),
      })
      .returning();
    if (!row) throw new Error("key insert returned nothing");
    await ctx.routes.refresh();
    const body: ApiKeyCreated = { ...keyInfo(row), key };
    return c.json(body, 201);
  });

  app.get("/", async (c) => {
    const rows = await ctx.db
      .select()
      .from(schema.apiKeys)
      .orderBy(asc(schema.apiKeys.createdAt), asc(schema.apiKeys.id));
    const body: ApiKeyList = { keys: rows.map(keyInfo) };
    return c.json(body);
  });

  app.delete("/:id", async (c) => {
    const id = c.req.param("id");
    const [row] = await ctx.db
      .update(schema.apiKeys)
      .set({
        revokedAt: sql`coalesce(${schema.apiKeys.revokedAt}, ${ctx.clock.now().toISOString()}::timestamptz)`,
      })
      .where(eq(schema.apiKeys.id, id))
      .returning();
    if (!row) throw new AppError("not_found", `no API key with id ${id}`, { param: "id" });
    await ctx.routes.refresh();
    return c.json(keyInfo(row));
  });

  return app;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new AppError("invalid_json", "request body is not valid JSON");
  }
}

function keyInfo(row: KeyRow): ApiKeyInfo {
  return {
    id: row.id,
    name: row.name,
    prefix: row.prefix,
    created_at: row.createdAt.toISOString(),
    revoked_at: row.revokedAt?.toISOString() ?? null,
  };
}

export async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
