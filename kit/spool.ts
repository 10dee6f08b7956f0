/**
 * Where records wait when they cannot be delivered (the database or the manager is down), so
 * that a restart does not lose them. Web-standard type only: the file implementation
 * (runtime/file-spool.ts) is passed in by the Bun and Node entries; workerd has none.
 */
export type Spool = {
  /** Writes records to disk as one segment; resolves once they are there. */
  append(records: readonly unknown[]): Promise<void>;
  /** The oldest segment waiting, parsed (records are checked again where they are written). */
  oldest(): Promise<{ id: string; records: unknown[] } | undefined>;
  /** The segment was delivered: it goes. */
  remove(id: string): Promise<void>;
  /** Records and bytes waiting on disk. */
  size(): { records: number; bytes: number };
  /** Records dropped since start because the spool was full (oldest segments first) or unreadable. */
  dropped(): number;
};
