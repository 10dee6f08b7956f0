import type { RouteEntry, RoutingPolicy } from "../../protocol/index.ts";
import { Balancer, hash32 } from "../../router/balancer.ts";
import { parseInferenceBody } from "../../router/body.ts";
import { affinityKey, opensConversation } from "../../router/policy.ts";

/**
 * The router's replica choice for a request, computed from its raw body the way the router
 * does (body.ts decode and parse, policy.ts key, balancer.ts hash and ranking), with no
 * server around it. tests/router/policy-runtimes.test.ts runs it in Bun (imported), in Node
 * (`node --import tsx`, `runInNode`) and in workerd (bundled, the default export's `fetch`
 * in Miniflare) and requires the three to agree.
 */

export type ProbeCase = {
  policy: RoutingPolicy;
  path: string;
  /** `x-session-id`, when the request carries one. */
  session?: string;
  /** The request body's bytes, base64 (so bytes that are not UTF-8 travel as they are). */
  body: string;
};

export type ProbeInput = { cases: ProbeCase[]; routes: RouteEntry[]; texts: string[] };

export type ProbeOutput = {
  /** Per case: the affinity key (null: none), its hash, the replicas' worker ids in the
   * order the balancer walks them with every load at zero, and whether it opens its
   * conversation (placed by load alone). */
  cases: { key: string | null; hash: number | null; ranking: string[]; opening: boolean }[];
  /** `hash32` of each of `texts`. */
  hashes: number[];
};

export function base64Of(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

function bytesOf(base64: string): Uint8Array<ArrayBuffer> {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let index = 0; index < binary.length; index++) bytes[index] = binary.charCodeAt(index);
  return bytes;
}

/**
 * The balancer's walk order for `key` with every load at zero: its pick, then its pick with
 * that one excluded, …
 */
export function rankingOf(routes: readonly RouteEntry[], key: string): string[] {
  const balancer = new Balancer({
    ejectAfter: 3,
    cooldownMs: 1000,
    maxCooldownMs: 1000,
    now: Date.now,
  });
  const excluded = new Set<string>();
  const order: string[] = [];
  for (;;) {
    const pick = balancer.pick(routes, excluded, key);
    if (!pick) return order;
    order.push(pick.route.worker_id);
    excluded.add(pick.state.key);
  }
}

export function probe(input: ProbeInput): ProbeOutput {
  return {
    cases: input.cases.map((entry) => {
      const { json, body } = parseInferenceBody(bytesOf(entry.body));
      const key = affinityKey(
        entry.policy,
        entry.session || body.user || undefined,
        json,
        entry.path,
      );
      const opening = opensConversation(json, entry.path);
      if (key === undefined) return { key: null, hash: null, ranking: [], opening };
      const routes = input.routes.filter((route) => route.alias === body.model);
      return { key, hash: hash32(key), ranking: rankingOf(routes, key), opening };
    }),
    hashes: input.texts.map(hash32),
  };
}

/** workerd: `POST` a `ProbeInput`, get the `ProbeOutput`. */
export default {
  async fetch(request: Request): Promise<Response> {
    return Response.json(probe((await request.json()) as ProbeInput));
  },
};
