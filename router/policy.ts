import type { RoutingPolicy } from "../protocol/index.ts";

/**
 * The affinity key a request routes by under its model's policy (docs/router.md "Routing
 * policies"); undefined: least loaded (balancer.ts).
 *
 * - `prefix_affinity`: the conversation's stable prefix — its leading system/developer
 *   messages (their first `SYSTEM_KEY_CHARS` characters) and its first user message (its
 *   first `MESSAGE_KEY_CHARS`), the same in every turn of one conversation and different
 *   between conversations however long the shared system prompt (a Responses request's
 *   `instructions` stand for its system message, its input items for the messages); or the
 *   first `PREFIX_CHARS` characters of a completion prompt or embedding input. A request with no
 *   such text (token ids only, a rerank or score) falls back to its session, then to least
 *   loaded.
 * - `session`: `x-session-id`, else the body's `user`; none: least loaded.
 * - `least_loaded`: none.
 * - `round_robin`: `ROUND_ROBIN`, the balancer's turn-taking (a load-blind baseline).
 *
 * Only plain string operations on the parsed JSON: the same key in Bun, Node and workerd.
 */
export const PREFIX_CHARS = 256;
/** The key that asks the balancer for the next replica in turn (not a hash key). */
export const ROUND_ROBIN = "\u0000round-robin";
/**
 * System text beyond this is not read: two system prompts that agree this far share most
 * of their KV blocks anyway. The cap applies to the system part alone, so that the first
 * user message — what tells one conversation from another under a shared system prompt —
 * is always in the key (an agent's instructions and tool definitions run to thousands of
 * tokens; a key that stopped at them sent every conversation of one agent to one replica).
 */
export const SYSTEM_KEY_CHARS = 4096;
/** The first user (or other non-system) message's characters in the key. */
export const MESSAGE_KEY_CHARS = 1024;

export function affinityKey(
  policy: RoutingPolicy,
  session: string | undefined,
  json: Record<string, unknown>,
  path: string,
): string | undefined {
  if (policy === "least_loaded") return undefined;
  if (policy === "round_robin") return ROUND_ROBIN;
  if (policy === "session") return session ? `s:${session}` : undefined;
  const prefix = prefixKey(json, path);
  if (prefix !== undefined) return `p:${prefix}`;
  return session ? `s:${session}` : undefined;
}

/**
 * Whether a chat request opens its conversation: no assistant turn yet, so no replica holds
 * anything of it beyond what it shares with others (a common system prompt, which every
 * replica that serves the model soon has cached anyway). Affinity then only chooses where
 * the conversation will live, and the balancer places it by load alone (balancer.ts
 * "Openings"): a one-shot prompt with nothing to reuse is never kept waiting for a warm
 * cache it cannot use. Completions and embeddings carry no turns: never an opening.
 */
export function opensConversation(json: Record<string, unknown>, path: string): boolean {
  if (path === "/v1/responses") {
    // A Responses turn that continues a stored one, or carries earlier output, is not one.
    if (typeof json.previous_response_id === "string") return false;
    if (typeof json.input === "string") return true;
    if (!Array.isArray(json.input)) return false;
    return !json.input.some(
      (item) =>
        typeof item === "object" &&
        item !== null &&
        ((item as { role?: unknown }).role === "assistant" ||
          (item as { type?: unknown }).type === "function_call"),
    );
  }
  if (path !== "/v1/chat/completions") return false;
  const { messages } = json;
  if (!Array.isArray(messages)) return false;
  for (const message of messages) {
    if (typeof message === "object" && message !== null) {
      if ((message as { role?: unknown }).role === "assistant") return false;
    }
  }
  return true;
}

export function prefixKey(json: Record<string, unknown>, path: string): string | undefined {
  if (path === "/v1/chat/completions") return chatPrefix(json.messages);
  if (path === "/v1/responses") return chatPrefix(responseMessages(json));
  // A reranker reads each document with the query as one short input: nothing worth keeping
  // warm, so rerank and score go by load.
  if (path !== "/v1/completions" && path !== "/v1/embeddings") return undefined;
  const input = path === "/v1/embeddings" ? json.input : json.prompt;
  const first = Array.isArray(input) ? input[0] : input;
  if (typeof first !== "string" || first.length === 0) return undefined;
  return first.slice(0, PREFIX_CHARS);
}

function chatPrefix(messages: unknown): string | undefined {
  if (!Array.isArray(messages)) return undefined;
  let key = "";
  let system = 0;
  for (const message of messages) {
    if (typeof message !== "object" || message === null) return undefined;
    const { role, content } = message as { role?: unknown; content?: unknown };
    if (typeof role !== "string") return undefined;
    const text = textOf(content);
    if (role === "system" || role === "developer") {
      // Leading system/developer messages, up to SYSTEM_KEY_CHARS of their text in all.
      if (system >= SYSTEM_KEY_CHARS) continue;
      const taken = text.slice(0, SYSTEM_KEY_CHARS - system);
      system += taken.length;
      key += `\u0000${role}\u0000${taken}`;
      continue;
    }
    // The first user (or other) message ends it.
    return `${key}\u0000${role}\u0000${text.slice(0, MESSAGE_KEY_CHARS)}`;
  }
  return key.length > 0 ? key : undefined;
}

function textOf(content: unknown): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  let text = "";
  for (const part of content) {
    if (typeof part === "object" && part !== null) {
      const value = (part as { text?: unknown }).text;
      if (typeof value === "string") text += value;
    }
  }
  return text;
}

/**
 * A Responses request as chat messages, for its key: `instructions` is the system message,
 * a string `input` one user message, and input items stand as they are (messages have `role`
 * and `content`; other items end the prefix, as a non-message does in chat).
 */
function responseMessages(json: Record<string, unknown>): unknown {
  const { instructions, input } = json;
  const system =
    typeof instructions === "string" && instructions !== ""
      ? [{ role: "system", content: instructions }]
      : [];
  if (typeof input === "string") return [...system, { role: "user", content: input }];
  if (!Array.isArray(input)) return undefined;
  return [...system, ...input];
}
