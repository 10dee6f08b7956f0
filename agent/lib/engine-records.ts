/**
 * The agent's record of the engines it runs: `{AGENT_DATA_DIR}/engines.json`, rewritten
 * atomically whenever an engine starts, becomes ready, restarts or stops. A restarted agent
 * reads it to adopt the engines that are still running (agent/lib/adoption.ts).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import {
  aliasSchema,
  instanceSpecSchema,
  isoTimeSchema,
  portSchema,
} from "../../protocol/index.ts";
import { writeFileAtomic } from "./atomic-file.ts";

/** One engine as launched: enough to tell later whether a pid is still that engine. */
export const engineRecordSchema = z.object({
  alias: aliasSchema,
  pid: z.number().int().positive(),
  /** Its process group (the engine leads its own: the same as pid). */
  pgid: z.number().int().positive(),
  /** Field 22 of /proc/{pid}/stat: clock ticks after boot. A reused pid has another. */
  start_time: z.string().min(1),
  /** /proc/sys/kernel/random/boot_id when it started: start times compare within one boot. */
  boot_id: z.string().nullable(),
  port: portSchema,
  /** The argv the agent ran (`VLLM_BIN serve MODEL --host … --port P …`). */
  argv: z.array(z.string()).min(1),
  spec: instanceSpecSchema,
  started_at: isoTimeSchema,
  /** When it first answered as ready; null while it was still loading. */
  ready_at: isoTimeSchema.nullable(),
  restarts: z.number().int().min(0),
});
export type EngineRecord = z.infer<typeof engineRecordSchema>;

const engineFileSchema = z.object({
  version: z.literal(1),
  engines: z.array(z.unknown()),
});

export const engineRecordsFileName = "engines.json";

/**
 * Set in every engine's environment: which agent launched it (a hash of the agent's data
 * directory) and as what alias. An agent that finds its own marker on a process it has no
 * record of stops it, so a lost record never leaves an engine holding a GPU.
 */
export const ownerVariable = "FLEET_ENGINE_OWNER";
export const aliasVariable = "FLEET_ENGINE_ALIAS";

/** Reads and writes one agent's engine records. */
export class EngineRecords {
  readonly path: string;

  constructor(readonly dir: string) {
    this.path = join(dir, engineRecordsFileName);
  }

  /**
   * The records, and the problems met reading them: a record that does not parse is skipped
   * (and named), a file that does not parse gives none. No file: none, no problem.
   */
  load(): { records: EngineRecord[]; problems: string[] } {
    let text: string;
    try {
      text = readFileSync(this.path, "utf8");
    } catch (error) {
      if ((error as { code?: string }).code === "ENOENT") return { records: [], problems: [] };
      return { records: [], problems: [`cannot read ${this.path}: ${String(error)}`] };
    }
    let file: z.infer<typeof engineFileSchema>;
    try {
      file = engineFileSchema.parse(JSON.parse(text));
    } catch {
      return { records: [], problems: [`${this.path} is not an engine records file`] };
    }
    const records: EngineRecord[] = [];
    const problems: string[] = [];
    file.engines.forEach((entry, i) => {
      const parsed = engineRecordSchema.safeParse(entry);
      if (parsed.success) records.push(parsed.data);
      else problems.push(`${this.path}: engine record ${i} does not parse`);
    });
    return { records, problems };
  }

  /** Replaces the file atomically (throws when the disk refuses). */
  save(records: readonly EngineRecord[]): void {
    writeFileAtomic(this.path, `${JSON.stringify({ version: 1, engines: records }, null, 2)}\n`);
  }
}
