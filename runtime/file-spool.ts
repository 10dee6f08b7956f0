import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { readFile, rename, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "../kit/log.ts";
import type { Spool } from "../kit/spool.ts";

type Segment = { id: string; records: number; bytes: number };

const segmentName = /^(\d{13})-(\d{6})-(\d+)\.ndjson$/;
/** A segment being written when its process died: never complete, never delivered. */
const partialName = /^\.\d{13}-\d{6}-(\d+)\.ndjson\.tmp$/;

/**
 * A spool on disk (Bun and Node): a directory of segment files, one per `append`, each a
 * JSON record per line, written once (to a temporary name, then renamed, so a crash leaves
 * no half segment) and removed once delivered. The total is capped at `maxBytes`: past it
 * the oldest segments go first, counted in `dropped()`.
 *
 * Several processes on one host may share the directory: a segment's name carries the id of
 * the process that wrote it, and a process that starts claims (renames to its own id) the
 * segments of processes that are gone, so each segment is replayed by one process only. A
 * process that restarts with the same id (pid 1 in a container) finds its own segments.
 */
export function openFileSpool(options: { dir: string; maxBytes: number; log: Logger }): Spool {
  const { dir, maxBytes, log } = options;
  mkdirSync(dir, { recursive: true });
  const pid = process.pid;
  const segments: Segment[] = [];
  let total = 0;
  let records = 0;
  let dropped = 0;
  let sequence = 0;

  for (const name of readdirSync(dir).sort()) {
    const partial = partialName.exec(name);
    if (partial && (Number(partial[1]) === pid || !isAlive(Number(partial[1])))) {
      rmSync(join(dir, name), { force: true });
      continue;
    }
    const match = segmentName.exec(name);
    if (!match) continue;
    const owner = Number(match[3]);
    let id = name;
    if (owner !== pid) {
      if (isAlive(owner)) continue;
      id = `${match[1]}-${match[2]}-${pid}.ndjson`;
      try {
        renameSync(join(dir, name), join(dir, id));
      } catch {
        continue; // another process claimed it first
      }
    }
    const bytes = statSync(join(dir, id)).size;
    const lines = countLines(readFileSync(join(dir, id), "utf8"));
    segments.push({ id, records: lines, bytes });
    total += bytes;
    records += lines;
  }
  segments.sort((a, b) => (a.id < b.id ? -1 : 1));
  if (segments.length > 0) {
    log.info("usage spool: records from before the restart will be delivered", {
      dir,
      segments: segments.length,
      records,
      bytes: total,
    });
  }

  const forget = (segment: Segment) => {
    const index = segments.indexOf(segment);
    if (index === -1) return;
    segments.splice(index, 1);
    total -= segment.bytes;
    records -= segment.records;
  };

  return {
    async append(batch) {
      if (batch.length === 0) return;
      const text = `${batch.map((record) => JSON.stringify(record)).join("\n")}\n`;
      const bytes = Buffer.byteLength(text);
      if (bytes > maxBytes) {
        dropped += batch.length;
        log.error("usage spool: a batch larger than USAGE_SPOOL_MAX_MB was dropped", {
          records: batch.length,
          bytes,
        });
        return;
      }
      while (total + bytes > maxBytes && segments.length > 0) {
        const oldest = segments[0] as Segment;
        forget(oldest);
        dropped += oldest.records;
        await unlink(join(dir, oldest.id)).catch(() => {});
      }
      const id = `${Date.now()}-${String(sequence++ % 1_000_000).padStart(6, "0")}-${pid}.ndjson`;
      const temporary = join(dir, `.${id}.tmp`);
      await writeFile(temporary, text);
      await rename(temporary, join(dir, id));
      segments.push({ id, records: batch.length, bytes });
      total += bytes;
      records += batch.length;
    },

    async oldest() {
      const segment = segments[0];
      if (!segment) return undefined;
      let text: string;
      try {
        text = await readFile(join(dir, segment.id), "utf8");
      } catch (error) {
        forget(segment);
        dropped += segment.records;
        log.error("usage spool: a segment could not be read; skipped", {
          segment: segment.id,
          error: String(error),
        });
        return this.oldest();
      }
      const parsed: unknown[] = [];
      let unreadable = 0;
      for (const line of text.split("\n")) {
        if (line === "") continue;
        try {
          parsed.push(JSON.parse(line));
        } catch {
          unreadable++;
        }
      }
      dropped += unreadable;
      return { id: segment.id, records: parsed };
    },

    async remove(id) {
      const segment = segments.find((s) => s.id === id);
      if (segment) forget(segment);
      await unlink(join(dir, id)).catch(() => {});
    },

    size: () => ({ records, bytes: total }),

    dropped: () => dropped,
  };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, owned by someone else.
    return (error as { code?: string }).code === "EPERM";
  }
}

function countLines(text: string): number {
  let lines = 0;
  for (let at = text.indexOf("\n"); at !== -1; at = text.indexOf("\n", at + 1)) lines++;
  return lines;
}
