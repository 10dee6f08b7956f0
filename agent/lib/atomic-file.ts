/**
 * Files the agent replaces whole: a temporary file (mode 0600), fsync, rename, fsync of the
 * directory, so a crash at any point leaves either the old content or the new, never half.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import { dirname } from "node:path";

/** Replaces `path` with `text` atomically, readable by the agent's user alone (throws on failure). */
export function writeFileAtomic(path: string, text: string): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp`;
  rmSync(tmp, { force: true });
  // `wx`: a fresh file created with mode 0600, never an existing one with looser bits.
  const fd = openSync(tmp, "wx", 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  syncDir(dir);
}

/** Makes the rename durable; some filesystems refuse to fsync a directory, which is fine. */
function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, "r");
    fsyncSync(fd);
  } catch {
    // Best effort.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
