import { expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import type { ApiKeyCreated, OpenAiError, RouteSnapshot } from "../../../protocol/index.ts";
import { createRouterToken } from "../helpers.ts";
import { describeApi } from "./harness.ts";

/**
 * API keys: shown once, stored hashed, listed, revoked; what the route snapshot carries.
 */
describeApi("manager API: API keys", (api) => {
  test("API keys: shown once, stored as SHA-256 only, listed without the key, revocable", async () => {
    const t = await api.manager();
    const router = await createRouterToken(t);
    const created = await t.json<ApiKeyCreated>("POST", "/v1/keys", { body: { name: "ci" } });
    expect(created.status).toBe(201);
    expect(created.body.key).toMatch(/^sk-fleet-[A-Za-z0-9_-]{43}$/);
    expect(created.body.prefix).toBe(created.body.key.slice(0, 13));
    const stored = await t.db.query<Record<string, unknown>>(sql`select * from api_keys`);
    expect(JSON.stringify(stored)).not.toContain(created.body.key);
    const hash = new Bun.CryptoHasher("sha256").update(created.body.key).digest("hex");
    expect(stored[0]?.key_hash).toBe(hash);
    const list = await t.json<{ keys: Record<string, unknown>[] }>("GET", "/v1/keys");
    expect(list.body.keys).toHaveLength(1);
    expect(list.body.keys[0]).not.toHaveProperty("key");
    const snapshot = await t.json<RouteSnapshot>("GET", "/v1/routes", { token: router });
    expect(snapshot.body.api_keys).toEqual([{ id: created.body.id, key_hash: hash }]);
    const revoked = await t.json<{ revoked_at: string | null }>(
      "DELETE",
      `/v1/keys/${created.body.id}`,
    );
    expect(revoked.status).toBe(200);
    expect(revoked.body.revoked_at).not.toBeNull();
    const after = await t.json<RouteSnapshot>("GET", "/v1/routes", { token: router });
    expect(after.body.api_keys).toEqual([]);
    expect((await t.call("DELETE", "/v1/keys/key_missing")).status).toBe(404);
    // An id that is not one (a NUL, a path trick, a router's) is refused before the database.
    for (const id of ["%00", "key_%00", "..%2Fkeys", "rtr_abc", "x".repeat(300)]) {
      const bad = await t.json<OpenAiError>("DELETE", `/v1/keys/${id}`);
      expect(bad.status).toBe(400);
      expect(bad.body.error).toMatchObject({ code: "invalid_request", param: "id" });
    }
    expect((await t.call("POST", "/v1/keys", { body: "" })).status).toBe(201);
  });
});
