/**
 * The last lines an engine printed (stdout and stderr interleaved), kept in memory so that
 * a failure can quote its log tail and `GET /v1/instances/{alias}/logs` can show it.
 */
export class LineBuffer {
  readonly #lines: string[] = [];
  readonly #maxLines: number;
  readonly #maxLineLength: number;
  /** How many lines were ever pushed; lets callers tell whether a line has rotated out. */
  total = 0;

  constructor(options: { maxLines?: number; maxLineLength?: number } = {}) {
    this.#maxLines = options.maxLines ?? 2000;
    this.#maxLineLength = options.maxLineLength ?? 4096;
  }

  push(line: string): void {
    this.#lines.push(
      line.length > this.#maxLineLength ? `${line.slice(0, this.#maxLineLength)}…` : line,
    );
    this.total++;
    if (this.#lines.length > this.#maxLines)
      this.#lines.splice(0, this.#lines.length - this.#maxLines);
  }

  tail(count: number): string[] {
    return count <= 0 ? [] : this.#lines.slice(-count);
  }

  /** Pipes a byte stream into the buffer line by line; resolves when the stream ends. */
  async pump(stream: ReadableStream<Uint8Array>, onLine?: (line: string) => void): Promise<void> {
    const decoder = new TextDecoder();
    let pending = "";
    const reader = stream.getReader();
    try {
      for (;;) {
        const { done, value: chunk } = await reader.read();
        if (done) break;
        pending += decoder.decode(chunk, { stream: true });
        let newline = pending.indexOf("\n");
        while (newline !== -1) {
          const line = pending.slice(0, newline).replace(/\r$/, "");
          pending = pending.slice(newline + 1);
          this.push(line);
          onLine?.(line);
          newline = pending.indexOf("\n");
        }
        // A process that prints megabytes without a newline must not grow memory unbounded.
        if (pending.length > this.#maxLineLength * 4) {
          this.push(pending);
          pending = "";
        }
      }
    } catch {
      // The pipe broke because the process died; whatever was read is kept.
    }
    pending += decoder.decode();
    if (pending !== "") {
      this.push(pending);
      onLine?.(pending);
    }
  }
}
