import { canBind } from "./net.ts";

export type PortRange = { min: number; max: number };

/**
 * Leases engine ports from a range. A port is handed out only after a bind test on
 * 127.0.0.1, and the cursor moves on round-robin so that a port just released by a
 * stopped engine (possibly still in TIME_WAIT) is the last one to be reused.
 */
export class PortLeaser {
  readonly #range: PortRange;
  readonly #leased = new Set<number>();
  #cursor: number;

  constructor(range: PortRange) {
    this.#range = range;
    this.#cursor = range.min;
  }

  /** Leases a free port from the range, or `null` when every port is taken. */
  async lease(): Promise<number | null> {
    const size = this.#range.max - this.#range.min + 1;
    for (let i = 0; i < size; i++) {
      const port = this.#cursor;
      this.#cursor = port >= this.#range.max ? this.#range.min : port + 1;
      if (this.#leased.has(port)) continue;
      // Reserve before the async bind test so that two concurrent launches never race.
      this.#leased.add(port);
      if (await canBind(port)) return port;
      this.#leased.delete(port);
    }
    return null;
  }

  /** Leases a specific port (the manager asked for it); false when taken or unbindable. */
  async leaseExact(port: number): Promise<boolean> {
    if (this.#leased.has(port)) return false;
    this.#leased.add(port);
    if (await canBind(port)) return true;
    this.#leased.delete(port);
    return false;
  }

  /**
   * Marks a port as leased without a bind test: an adopted engine already listens on it.
   * False when this agent has it leased already.
   */
  reserve(port: number): boolean {
    if (this.#leased.has(port)) return false;
    this.#leased.add(port);
    return true;
  }

  release(port: number): void {
    this.#leased.delete(port);
  }
}
