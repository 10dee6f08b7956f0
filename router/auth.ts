import { sha256Hex } from "../kit/crypto.ts";
import { AppError } from "../kit/errors.ts";
import type { RouteSnapshot } from "../protocol/index.ts";

/**
 * The API keys of one route snapshot: the active key hashes, plus a cache of presented keys
 * so a client's key is hashed once per snapshot, not once per request. A new snapshot
 * (a key created or revoked) starts a new cache, so a revoked key stops working at once.
 */
export type ApiKeys = {
  /** key_hash → key id */
  byHash: Map<string, string>;
  /** presented key → key id, or null when it matches no active key; bounded. */
  cache: Map<string, string | null>;
};

const cacheLimit = 1024;

export function apiKeysOf(snapshot: RouteSnapshot): ApiKeys {
  return {
    byHash: new Map(snapshot.api_keys.map((key) => [key.key_hash, key.id])),
    cache: new Map(),
  };
}

/**
 * The id of the API key the request presents (`Authorization: Bearer <key>`), or null when
 * no key is needed (no key exists and `requireApiKey` is off: a router on loopback before
 * its first key; the header is not even read then). Throws 401 `invalid_api_key` for a
 * missing or unknown key. Answers at once when it needs no hashing (no key needed, or a key
 * this snapshot has seen), a promise otherwise: most requests skip a turn of the event loop.
 */
export function authenticate(
  keys: ApiKeys,
  requireApiKey: boolean,
  headers: Headers,
): string | null | Promise<string | null> {
  if (keys.byHash.size === 0 && !requireApiKey) return null;
  const authorization = headers.get("authorization");
  const presented = authorization?.startsWith("Bearer ") ? authorization.slice(7).trim() : "";
  if (!presented) {
    throw new AppError(
      "invalid_api_key",
      "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
    );
  }
  const id = keys.cache.get(presented);
  if (id === undefined) return lookUp(keys, presented);
  if (id === null) throw unknownKey();
  return id;
}

async function lookUp(keys: ApiKeys, presented: string): Promise<string | null> {
  const id = keys.byHash.get(await sha256Hex(presented)) ?? null;
  if (keys.cache.size >= cacheLimit) keys.cache.clear();
  keys.cache.set(presented, id);
  if (id === null) throw unknownKey();
  return id;
}

function unknownKey(): AppError {
  return new AppError("invalid_api_key", "Incorrect API key provided.");
}
