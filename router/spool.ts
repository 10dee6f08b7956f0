/**
 * The Bun and Node entries' usage spool (USAGE_SPOOL_DIR, USAGE_SPOOL_MAX_MB); workerd has
 * no disk and does without (router/worker.ts).
 */
import type { Logger } from "../kit/log.ts";
import type { Spool } from "../kit/spool.ts";
import { openFileSpool } from "../runtime/file-spool.ts";
import type { RouterEnv } from "./env.ts";

export function openUsageSpool(env: RouterEnv, log: Logger): Spool | undefined {
  if (env.USAGE_SPOOL_MAX_MB === 0) return undefined;
  try {
    return openFileSpool({
      dir: env.USAGE_SPOOL_DIR,
      maxBytes: env.USAGE_SPOOL_MAX_MB * 1024 * 1024,
      log,
    });
  } catch (error) {
    console.error(
      `invalid environment: USAGE_SPOOL_DIR ${env.USAGE_SPOOL_DIR} cannot be used: ${error instanceof Error ? error.message : String(error)}`,
    );
    process.exit(1);
  }
}
