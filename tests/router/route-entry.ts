import type { RouteEntry } from "../../protocol/index.ts";

/** A route table entry as the manager's snapshot carries it, for in-process router tests. */
export function route(options: {
  alias: string;
  workerId: string;
  url: string;
  ready?: boolean;
  /** The worker's agent credential (default: one derived from the worker id). */
  agentToken?: string | null;
  /** The model's context length, as registered (default: not known). */
  maxModelLen?: number | null;
  /** The model's routing policy (default: least_loaded, what these tests were written for). */
  routing?: RouteEntry["routing"];
}): RouteEntry {
  return {
    alias: options.alias,
    model_name: `org/${options.alias}`,
    worker_id: options.workerId,
    worker_url: options.url,
    vllm_port: null,
    created_at: "2025-01-01T00:00:00.000Z",
    instance_id: `${options.workerId}-${options.alias}`,
    ready: options.ready ?? true,
    agent_token:
      options.agentToken === undefined ? `fa_agent-of-${options.workerId}` : options.agentToken,
    max_model_len: options.maxModelLen ?? null,
    routing: options.routing ?? "least_loaded",
  };
}
