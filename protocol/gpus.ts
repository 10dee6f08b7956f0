import { z } from "zod";

/** One GPU as the agent reads it from nvidia-smi. Memory in MiB, utilization in percent. */
export const gpuSchema = z.object({
  index: z.number().int().min(0),
  uuid: z.string().nullable(),
  name: z.string(),
  memory_total_mib: z.number().int().min(0),
  memory_used_mib: z.number().int().min(0).nullable(),
  memory_free_mib: z.number().int().min(0).nullable(),
  utilization_pct: z.number().min(0).max(100).nullable(),
});
export type Gpu = z.infer<typeof gpuSchema>;

/** `gpu_info` as registration and heartbeats carry it. */
export const gpuInfoSchema = z.object({
  gpus: z.array(gpuSchema).max(64),
  /** Why discovery found nothing (no nvidia-smi, "No devices were found"), for operators. */
  warning: z.string().nullable().default(null),
});
export type GpuInfo = z.infer<typeof gpuInfoSchema>;
