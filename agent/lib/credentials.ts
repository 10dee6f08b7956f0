/**
 * The agent's credentials file: `{AGENT_DATA_DIR}/credentials.json`, readable by the agent's
 * user alone (0600), replaced atomically (a temporary file, fsync, rename, fsync of the
 * directory), so a crash leaves either the old pair or the new one, never half of either.
 */
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { isoTimeSchema, workerIdSchema } from "../../protocol/index.ts";
import { writeFileAtomic } from "./atomic-file.ts";

export const credentialsFileSchema = z.object({
  worker_id: workerIdSchema,
  manager_url: z.string(),
  worker_credential: z.string().min(1),
  agent_token: z.string().min(1),
  /** During a rotation: the agent credential routers may still hold, until the time below. */
  previous_agent_token: z.string().min(1).optional(),
  previous_valid_until: isoTimeSchema.optional(),
});
export type CredentialsFile = z.infer<typeof credentialsFileSchema>;

export const credentialsFileName = "credentials.json";

/** Reads and writes one agent's credentials file. */
export class CredentialStore {
  readonly path: string;

  constructor(readonly dir: string) {
    this.path = join(dir, credentialsFileName);
  }

  /**
   * The stored credentials, or why there are none to use: no file, an unreadable one, or one
   * written for another worker_id or manager (then it is ignored, and replaced on joining).
   */
  load(identity: {
    workerId: string;
    managerUrl: string;
  }): { ok: true; value: CredentialsFile } | { ok: false; why: string | null } {
    let text: string;
    try {
      text = readFileSync(this.path, "utf8");
    } catch (error) {
      if ((error as { code?: string }).code === "ENOENT") return { ok: false, why: null };
      return { ok: false, why: `cannot read ${this.path}: ${String(error)}` };
    }
    let parsed: CredentialsFile;
    try {
      parsed = credentialsFileSchema.parse(JSON.parse(text));
    } catch {
      return { ok: false, why: `${this.path} is not a credentials file` };
    }
    if (parsed.worker_id !== identity.workerId || parsed.manager_url !== identity.managerUrl) {
      return {
        ok: false,
        why: `${this.path} holds the credentials of worker ${parsed.worker_id} at ${parsed.manager_url}, not of ${identity.workerId} at ${identity.managerUrl}`,
      };
    }
    return { ok: true, value: parsed };
  }

  /** Replaces the file atomically, mode 0600 (throws when the disk refuses). */
  save(credentials: CredentialsFile): void {
    writeFileAtomic(this.path, `${JSON.stringify(credentials, null, 2)}\n`);
  }

  /** Forgets the credentials (the manager refused them). */
  clear(): void {
    rmSync(this.path, { force: true });
  }
}
