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
  /** Names this buffer, so that a reader following it by line number sees a new one. */
  readonly id = crypto.randomUUID();

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

  /**
   * The lines from number `after` on (0 is the first line ever pushed), at most `limit`, the
   * latest when there are more; `skipped` counts those after `after` left out.
   */
  since(after: number, limit: number): { lines: string[]; next: number; skipped: number } {
    const oldest = this.total - this.#lines.length;
    const from = Math.min(after, this.total);
    const start = Math.max(from, oldest, this.total - limit);
    return {
      lines: this.#lines.slice(start - oldest),
      next: this.total,
      skipped: start - from,
    };
  }

  /**
   * Pipes a byte stream into the buffer line by line; resolves when the stream ends. A lone
   * `\r` ends a line too: tqdm redraws its bars with `\r` (vLLM's shard and CUDA-graph
   * progress), and each redraw is worth seeing while the bar runs, not only when it closes.
   */
  async pump(stream: ReadableStream<Uint8Array>, onLine?: (line: string) => void): Promise<void> {
    const decoder = new TextDecoder();
    let pending = "";
    const emit = (line: string) => {
      this.push(line);
      onLine?.(line);
    };
    const reader = stream.getReader();
    try {
      for (;;) {
        const { done, value: chunk } = await reader.read();
        if (done) break;
        pending += decoder.decode(chunk, { stream: true });
        pending = this.#split(pending, emit);
        // A process that prints megabytes without a newline must not grow memory unbounded.
        if (pending.length > this.#maxLineLength * 4) {
          emit(pending);
          pending = "";
        }
      }
    } catch {
      // The pipe broke because the process died; whatever was read is kept.
    }
    pending += decoder.decode();
    pending = this.#split(pending.endsWith("\r") ? pending.slice(0, -1) : pending, emit);
    if (pending !== "") emit(pending);
  }

  /** Emits each complete line of `text`; returns the unfinished rest. */
  #split(text: string, emit: (line: string) => void): string {
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (c === "\n") {
        emit(text.slice(start, i));
        start = i + 1;
      } else if (c === "\r") {
        // `\r\n` is one line end; a `\r` last in the chunk may be the first half of one.
        if (i + 1 === text.length) break;
        const line = text.slice(start, i);
        if (text[i + 1] === "\n") {
          emit(line);
          i++;
        } else if (line !== "") {
          emit(line);
        }
        start = i + 1;
      }
    }
    return text.slice(start);
  }
}
