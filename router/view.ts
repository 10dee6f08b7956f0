import {
  type RouteEntry,
  type RouteSnapshot,
  type RoutingPolicy,
  routingPolicyOf,
} from "../protocol/index.ts";
import { type ApiKeys, apiKeysOf } from "./auth.ts";
import type { RouteSource } from "./types.ts";

export type AliasRoutes = { ready: RouteEntry[]; createdAt: number; routing: RoutingPolicy };

/** What a request needs from one route snapshot, indexed once per snapshot. */
export type RouteView = {
  snapshot: RouteSnapshot;
  aliases: Map<string, AliasRoutes>;
  keys: ApiKeys;
  /** `GET /v1/models`, serialised once. */
  modelsBody: string;
};

export function buildView(snapshot: RouteSnapshot): RouteView {
  const aliases = new Map<string, AliasRoutes>();
  for (const route of snapshot.routes) {
    let entry = aliases.get(route.alias);
    if (!entry) {
      // Every route of an alias carries its model's policy.
      entry = {
        ready: [],
        createdAt: Number.POSITIVE_INFINITY,
        routing: routingPolicyOf(route.routing),
      };
      aliases.set(route.alias, entry);
    }
    if (route.ready) entry.ready.push(route);
    entry.createdAt = Math.min(entry.createdAt, Date.parse(route.created_at) || 0);
  }
  const data = [...aliases.entries()]
    .filter(([, entry]) => entry.ready.length > 0)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([alias, entry]) => {
      const maxModelLen = entry.ready[0]?.max_model_len;
      return {
        id: alias,
        object: "model",
        created: Math.floor(entry.createdAt / 1000),
        owned_by: "vllm-fleet",
        root: entry.ready[0]?.model_name ?? alias,
        parent: null,
        // As vLLM's own card says it, when the model was registered with one; clients size
        // their prompts by it.
        ...(typeof maxModelLen === "number" ? { max_model_len: maxModelLen } : {}),
      };
    });
  return {
    snapshot,
    aliases,
    keys: apiKeysOf(snapshot),
    modelsBody: JSON.stringify({ object: "list", data }),
  };
}

/**
 * The current view of `routes`: rebuilt only when the source hands out a different snapshot
 * object (`onNewSnapshot` runs then), so a request costs one comparison. Undefined until the
 * first snapshot has loaded.
 */
export function viewSource(
  routes: RouteSource,
  onNewSnapshot: (snapshot: RouteSnapshot) => void,
): () => RouteView | undefined {
  let view: RouteView | undefined;
  return () => {
    const snapshot = routes.current();
    if (!snapshot) return undefined;
    if (view?.snapshot !== snapshot) {
      view = buildView(snapshot);
      onNewSnapshot(snapshot);
    }
    return view;
  };
}
