import { z } from "zod";
import { isoTimeSchema } from "./common.ts";

/**
 * Most tokens one request's record may carry in either count: 2^30, the longest context the
 * manager accepts (2^24) for 64 prompts or choices, and half of what an `integer` column
 * holds. Routers check tighter bounds when they know the model's context (router/usage-scan.ts).
 */
export const maxTokensPerRequest = 1_073_741_824;
/** Longest latency a record may carry: the largest `integer` in milliseconds (24.8 days). */
export const maxLatencyMs = 2_147_483_647;

const tokens = z.number().int().min(0).max(maxTokensPerRequest).nullable();
const milliseconds = z.number().int().min(0).max(maxLatencyMs).nullable();

/**
 * One request as the router saw it; becomes one `request_logs` row. A count or latency the
 * router could not trust is null, never a made-up number.
 */
export const usageRecordSchema = z.object({
  ts: isoTimeSchema,
  api_key_id: z.string().max(64).nullable(),
  alias: z.string().max(128),
  worker_id: z.string().max(128).nullable(),
  status: z.number().int().min(100).max(599),
  latency_ms: milliseconds,
  ttft_ms: milliseconds,
  prompt_tokens: tokens,
  completion_tokens: tokens,
  stream: z.boolean(),
});
export type UsageRecord = z.infer<typeof usageRecordSchema>;

/** Most records in one batch. */
export const maxUsageBatch = 5000;

/**
 * Router → manager: `POST /v1/usage` (bearer router credential or ADMIN_TOKEN). Records are
 * checked one by one (`usageRecordSchema`): a bad one is set aside with its reason and the
 * others are written, so one bad number never costs the batch.
 */
export const usageBatchSchema = z.object({
  records: z.array(z.unknown()).min(1).max(maxUsageBatch),
});
export type UsageBatch = { records: UsageRecord[] };

/** The manager's answer to a usage batch. */
export const usageBatchReplySchema = z.object({
  /** Records written to `request_logs`. */
  accepted: z.number().int(),
  /** Records set aside in `usage_dead_letters` (invalid, or refused by the database). */
  rejected: z.number().int(),
});
export type UsageBatchReply = z.infer<typeof usageBatchReplySchema>;
