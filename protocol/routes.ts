import { z } from "zod";
import { aliasSchema, isoTimeSchema, portSchema, workerIdSchema } from "./common.ts";

/**
 * The original system's `ModelRouting`, exactly: `worker_url` is the worker's
 * `public_worker_url` when it has one, else its internal `worker_url`.
 */
export const routingRecordSchema = z.strictObject({
  alias: aliasSchema,
  model_name: z.string(),
  worker_id: workerIdSchema,
  worker_url: z.string(),
  vllm_port: portSchema.nullable(),
  created_at: isoTimeSchema,
});
export type RoutingRecord = z.infer<typeof routingRecordSchema>;

/**
 * A model's route as `GET /v1/models/{alias}` lists it: the record plus whether routers may
 * send it traffic (its instance ready, its worker online and the routed path not known to
 * be unreachable). A model can be `ready` with a route that is not: its public URL is down.
 */
export const modelRouteSchema = routingRecordSchema.extend({ ready: z.boolean() });
export type ModelRoute = z.infer<typeof modelRouteSchema>;

/**
 * How routers choose among a model's replicas (docs/router.md "Routing policies"):
 * `least_loaded` (router in-flight + the engine's running and waiting, power of two
 * choices), `prefix_affinity` (rendezvous hash of the conversation's stable prefix, walking
 * on past loaded replicas), `session` (rendezvous hash of `x-session-id` or `user`, load
 * bounded), `round_robin` (each router in turn over the replicas, load blind: a baseline).
 */
export const routingPolicies = [
  "least_loaded",
  "prefix_affinity",
  "session",
  "round_robin",
] as const;
export const routingPolicySchema = z.enum(routingPolicies);
export type RoutingPolicy = z.infer<typeof routingPolicySchema>;

export function routingPolicyOf(value: string): RoutingPolicy {
  return (routingPolicies as readonly string[]).includes(value)
    ? (value as RoutingPolicy)
    : "prefix_affinity";
}

/**
 * One route in the snapshot routers read: the routing record plus what routers need. Not
 * strict (unlike the record), so a router ignores fields a newer manager adds.
 */
export const routeEntrySchema = z.object({
  ...routingRecordSchema.shape,
  instance_id: z.string(),
  /** Ready instance on an online worker: the only routes a router may send traffic to. */
  ready: z.boolean(),
  /**
   * The worker's agent credential: routers send it as `Authorization: Bearer` on `/proxy`
   * to that worker alone. Null when the worker has none (open mode).
   */
  agent_token: z.string().nullable().default(null),
  /**
   * The model's context length when it was registered with one: routers take it as the
   * bound of a request's token counts. Null: the engine's own default, not known here.
   */
  max_model_len: z.number().int().min(1).nullable().default(null),
  /**
   * The model's routing policy (`routingPolicies`). A plain string so that a router reading
   * a newer manager's policy still loads the snapshot; it routes an unknown one (or none,
   * from a manager before it) as `prefix_affinity` (`routingPolicyOf`).
   */
  routing: z.string().default("prefix_affinity"),
});
export type RouteEntry = z.infer<typeof routeEntrySchema>;

/** An API key as routers see it: only the SHA-256 of the key, never the key. */
export const apiKeyHashSchema = z.object({
  id: z.string(),
  key_hash: z.string().regex(/^[0-9a-f]{64}$/),
});
export type ApiKeyHash = z.infer<typeof apiKeyHashSchema>;

/**
 * `GET /v1/routes` (bearer router credential or ADMIN_TOKEN), served with `ETag: "{version}"`;
 * `If-None-Match` with the current version → 304. The version changes whenever anything
 * in the snapshot does. Active key hashes travel with the routes so that standalone and
 * edge routers check keys without a query per request.
 */
export const routeSnapshotSchema = z.object({
  version: z.string(),
  routes: z.array(routeEntrySchema),
  api_keys: z.array(apiKeyHashSchema),
});
export type RouteSnapshot = z.infer<typeof routeSnapshotSchema>;
