import { z } from "zod";
import { isoTimeSchema } from "./common.ts";

/** One request as the router saw it; becomes one `request_logs` row. */
export const usageRecordSchema = z.object({
  ts: isoTimeSchema,
  api_key_id: z.string().max(64).nullable(),
  alias: z.string().max(128),
  worker_id: z.string().max(128).nullable(),
  status: z.number().int().min(100).max(599),
  latency_ms: z.number().int().min(0),
  ttft_ms: z.number().int().min(0).nullable(),
  prompt_tokens: z.number().int().min(0).nullable(),
  completion_tokens: z.number().int().min(0).nullable(),
  stream: z.boolean(),
});
export type UsageRecord = z.infer<typeof usageRecordSchema>;

/** Router → manager: `POST /v1/usage` (bearer router credential or ADMIN_TOKEN). */
export const usageBatchSchema = z.object({
  records: z.array(usageRecordSchema).min(1).max(5000),
});
export type UsageBatch = z.infer<typeof usageBatchSchema>;
