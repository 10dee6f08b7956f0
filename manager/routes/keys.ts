import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { asc, eq, sql } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import { randomToken, sha256Hex } from "../../kit/crypto.ts";
import { AppError } from "../../kit/errors.ts";
import {
  type ApiKeyInfo,
  apiKeyCreatedSchema,
  apiKeyCreateSchema,
  apiKeyIdParamsSchema,
  apiKeyInfoSchema,
  apiKeyListSchema,
} from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import { accessFor, errors, json, jsonBody, routeGroup } from "./define.ts";

type KeyRow = typeof schema.apiKeys.$inferSelect;
const tags = ["API keys"];

/**
 * `/v1/keys` (ADMIN_TOKEN): API keys for the OpenAI surface. The key is shown once, in the
 * reply that creates it; the database keeps only its SHA-256 (hex) and a short prefix.
 */
export function keysRoutes(ctx: ManagerContext): OpenAPIHono {
  const access = accessFor(ctx);
  const app = routeGroup();

  app.openapi(
    createRoute({
      method: "post",
      path: "/",
      tags,
      summary: "Create an API key; the reply is the only place the key is ever shown",
      ...access.admin,
      // Validated even when empty (an empty body reads as `{}`), so `name` gets its default.
      request: { body: jsonBody(apiKeyCreateSchema, "may be empty: `{}` names the key `default`") },
      responses: {
        201: json(apiKeyCreatedSchema, "the new key, with `key` in full"),
        ...errors(400, 401),
      },
    }),
    async (c) => {
      const input = c.req.valid("json");
      const key = randomToken("sk-fleet-");
      const [row] = await ctx.db
        .insert(schema.apiKeys)
        .values({
          id: randomToken("key_", 9),
          keyHash: await sha256Hex(key),
          prefix: key.slice(0, 13),
          name: input.name,
          createdAt: ctx.clock.now(),
        })
        .returning();
      if (!row) throw new Error("key insert returned nothing");
      await ctx.routes.refresh();
      return c.json({ ...keyInfo(row), key }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/",
      tags,
      summary: "List API keys (never the keys themselves)",
      ...access.admin,
      responses: { 200: json(apiKeyListSchema, "every key, revoked ones too"), ...errors(401) },
    }),
    async (c) => {
      const rows = await ctx.db
        .select()
        .from(schema.apiKeys)
        .orderBy(asc(schema.apiKeys.createdAt), asc(schema.apiKeys.id));
      return c.json({ keys: rows.map(keyInfo) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/{id}",
      tags,
      summary: "Revoke an API key (idempotent); routers stop accepting it with the next snapshot",
      ...access.admin,
      request: { params: apiKeyIdParamsSchema },
      responses: {
        200: json(apiKeyInfoSchema, "the key's record with `revoked_at` set"),
        ...errors(400, 401, [404, "`not_found`: no key with that id"]),
      },
    }),
    async (c) => {
      const { id } = c.req.valid("param");
      const [row] = await ctx.db
        .update(schema.apiKeys)
        .set({
          revokedAt: sql`coalesce(${schema.apiKeys.revokedAt}, ${ctx.clock.now().toISOString()}::timestamptz)`,
        })
        .where(eq(schema.apiKeys.id, id))
        .returning();
      if (!row) throw new AppError("not_found", `no API key with id ${id}`, { param: "id" });
      await ctx.routes.refresh();
      return c.json(keyInfo(row), 200);
    },
  );

  return app;
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
