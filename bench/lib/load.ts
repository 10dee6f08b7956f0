/**
 * HTTP load generator for benchmarks: plain HTTP/1.1 keep-alive over raw TCP (Bun.connect).
 * Bun's `fetch` caps concurrent requests at 256 (BUN_CONFIG_MAX_HTTP_REQUESTS) and costs
 * more CPU per request than the servers we measure, so a lean client keeps the generator
 * from being the bottleneck on a 2-core machine. `http://` only (loopback benches).
 *
 *   const r = await runLoad({ url, body: {...}, concurrency: 64, durationMs: 3000 });
 *   const s = await runStreams({ url, body: {..., stream: true}, concurrency: 1000, durationMs: 5000 });
 *
 * Run it in a different process from the server under test (see spawnServer in server.ts).
 */
import type { Socket } from "bun";

export type Percentiles = { p50: number; p90: number; p99: number; max: number; mean: number };

export type LoadOptions = {
  url: string;
  method?: string;
  /** A string is sent as-is; anything else is JSON-encoded (content-type application/json). */
  body?: unknown;
  headers?: Record<string, string>;
  /** Connections, each with one request in flight at a time. */
  concurrency: number;
  /** Stop starting requests after this long (default 3000 unless `requests` is set). */
  durationMs?: number;
  /** Stop after this many requests in total. */
  requests?: number;
  /** A request slower than this counts as an error and its connection is replaced (10 s). */
  timeoutMs?: number;
};

export type LoadResult = {
  requests: number;
  /** Network errors, timeouts and unparsable responses. */
  errors: number;
  /** Responses with a status outside 2xx. */
  non2xx: number;
  statuses: Record<number, number>;
  elapsedMs: number;
  rps: number;
  latencyMs: Percentiles;
};

export type StreamOptions = Omit<LoadOptions, "concurrency"> & {
  /** Streams open at the same time. */
  concurrency: number;
  /** Stop starting streams after this long (default 5000 unless `requests` is set). */
  durationMs?: number;
};

export type StreamResult = {
  streams: number;
  errors: number;
  non2xx: number;
  /** SSE events (`\n\n`-terminated) received. */
  events: number;
  elapsedMs: number;
  eventsPerSecond: number;
  /** Request sent → first SSE event. */
  ttfbMs: Percentiles;
  /** Gap between consecutive SSE events of one stream. */
  gapMs: Percentiles;
};

/** The middle item by `key` (the upper middle of an even count). */
export function median<T>(items: T[], key: (item: T) => number): T {
  const sorted = [...items].sort((x, y) => key(x) - key(y));
  return sorted[Math.floor(sorted.length / 2)] as T;
}

/** Percentiles of `values` (sorted in place). */
export function percentiles(values: number[] | Float64Array): Percentiles {
  const sorted = Float64Array.from(values).sort();
  const n = sorted.length;
  if (n === 0) return { p50: 0, p90: 0, p99: 0, max: 0, mean: 0 };
  const at = (q: number) => sorted[Math.min(n - 1, Math.floor(q * n))] as number;
  let sum = 0;
  for (const value of sorted) sum += value;
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted[n - 1] as number, mean: sum / n };
}

type Target = { host: string; port: number; request: Uint8Array };

function target(options: LoadOptions): Target {
  const url = new URL(options.url);
  if (url.protocol !== "http:")
    throw new Error(`bench/lib/load: only http:// URLs (${options.url})`);
  const body =
    options.body === undefined
      ? ""
      : typeof options.body === "string"
        ? options.body
        : JSON.stringify(options.body);
  const method = options.method ?? (options.body === undefined ? "GET" : "POST");
  const headers: Record<string, string> = { host: url.host, ...options.headers };
  if (body) {
    headers["content-type"] ??= "application/json";
    headers["content-length"] = String(Buffer.byteLength(body));
  }
  const head = Object.entries(headers)
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join("");
  const request = Buffer.from(
    `${method} ${url.pathname}${url.search} HTTP/1.1\r\n${head}\r\n${body}`,
  );
  const host = url.hostname.replace(/^\[|\]$/g, "");
  return { host, port: Number(url.port || 80), request };
}

type Response = { status: number; firstEventAt: number; events: number };

type Handlers = {
  /** Called with the arrival time and the number of SSE events completed in one read. */
  onEvents?: (at: number, count: number) => void;
};

const CRLFCRLF = Buffer.from("\r\n\r\n");
const CRLF = Buffer.from("\r\n");

/**
 * One keep-alive connection that sends a fixed request and parses HTTP/1.1 responses
 * (Content-Length or chunked). Counts SSE event ends (`\n\n`) in the body as they arrive.
 */
class Connection {
  private socket: Socket<undefined> | null = null;
  private buffer: Buffer = Buffer.alloc(0);
  private phase: "head" | "length" | "chunk-size" | "chunk-data" | "chunk-end" | "trailer" = "head";
  private remaining = 0;
  private status = 0;
  private close = false;
  private lastByte = 0;
  private events = 0;
  private pending: {
    resolve: (response: Response) => void;
    reject: (error: Error) => void;
    handlers: Handlers;
    timer: ReturnType<typeof setTimeout>;
  } | null = null;

  constructor(private readonly target: Target) {}

  private async connect(): Promise<Socket<undefined>> {
    const self = this;
    return Bun.connect({
      hostname: this.target.host,
      port: this.target.port,
      socket: {
        data(_socket, data) {
          self.onData(data);
        },
        close() {
          self.socket = null;
          self.fail(new Error("connection closed"));
        },
        error(_socket, error) {
          self.socket = null;
          self.fail(error);
        },
      },
    });
  }

  async send(timeoutMs: number, handlers: Handlers = {}): Promise<Response> {
    if (!this.socket) {
      this.reset();
      this.socket = await this.connect();
    }
    const socket = this.socket;
    return new Promise<Response>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(new Error(`timed out after ${timeoutMs} ms`));
        this.destroy();
      }, timeoutMs);
      this.pending = { resolve, reject, handlers, timer };
      this.phase = "head";
      this.events = 0;
      this.lastByte = 0;
      const written = socket.write(this.target.request);
      if (written < this.target.request.length) {
        // Rare for small requests: queue the rest (Bun buffers until drain).
        socket.write(this.target.request.subarray(written));
      }
    });
  }

  destroy(): void {
    const socket = this.socket;
    this.socket = null;
    socket?.end();
  }

  private reset(): void {
    this.buffer = Buffer.alloc(0);
    this.phase = "head";
  }

  private fail(error: Error): void {
    const pending = this.pending;
    if (!pending) return;
    this.pending = null;
    clearTimeout(pending.timer);
    pending.reject(error);
  }

  private finish(): void {
    const pending = this.pending;
    if (!pending) return;
    this.pending = null;
    clearTimeout(pending.timer);
    if (this.close) this.destroy();
    pending.resolve({ status: this.status, firstEventAt: 0, events: this.events });
  }

  private countEvents(body: Uint8Array): void {
    const onEvents = this.pending?.handlers.onEvents;
    if (!onEvents) return;
    let count = 0;
    let previous = this.lastByte;
    for (let i = 0; i < body.length; i++) {
      const byte = body[i] as number;
      if (byte === 10 && previous === 10) count++;
      previous = byte;
    }
    this.lastByte = previous;
    if (count > 0) {
      this.events += count;
      onEvents(performance.now(), count);
    }
  }

  private onData(data: Buffer): void {
    this.buffer = this.buffer.length === 0 ? data : Buffer.concat([this.buffer, data]);
    for (;;) {
      if (!this.pending) {
        this.buffer = Buffer.alloc(0);
        return;
      }
      const buffer = this.buffer;
      if (this.phase === "head") {
        const end = buffer.indexOf(CRLFCRLF);
        if (end < 0) return;
        const head = buffer.toString("latin1", 0, end).toLowerCase();
        this.status = Number(head.slice(9, 12));
        this.close = /\r\nconnection: *close/.test(head);
        this.buffer = buffer.subarray(end + 4);
        const length = /\r\ncontent-length: *(\d+)/.exec(head);
        if (/\r\ntransfer-encoding: *chunked/.test(head)) this.phase = "chunk-size";
        else {
          this.phase = "length";
          this.remaining = length ? Number(length[1]) : 0;
        }
        continue;
      }
      if (this.phase === "length") {
        const take = Math.min(this.remaining, buffer.length);
        this.countEvents(buffer.subarray(0, take));
        this.remaining -= take;
        this.buffer = buffer.subarray(take);
        if (this.remaining === 0) {
          this.finish();
          continue;
        }
        return;
      }
      if (this.phase === "chunk-size" || this.phase === "trailer") {
        const end = buffer.indexOf(CRLF);
        if (end < 0) return;
        const line = buffer.toString("latin1", 0, end);
        this.buffer = buffer.subarray(end + 2);
        if (this.phase === "trailer") {
          if (line === "") this.finish();
          continue;
        }
        this.remaining = Number.parseInt(line, 16);
        if (Number.isNaN(this.remaining)) {
          this.fail(new Error(`bad chunk size ${JSON.stringify(line)}`));
          this.destroy();
          return;
        }
        this.phase = this.remaining === 0 ? "trailer" : "chunk-data";
        continue;
      }
      if (this.phase === "chunk-data") {
        const take = Math.min(this.remaining, buffer.length);
        if (take === 0) return;
        this.countEvents(buffer.subarray(0, take));
        this.remaining -= take;
        this.buffer = buffer.subarray(take);
        if (this.remaining === 0) this.phase = "chunk-end";
        continue;
      }
      // chunk-end: the CRLF after a chunk's data.
      if (buffer.length < 2) return;
      this.buffer = buffer.subarray(2);
      this.phase = "chunk-size";
    }
  }
}

type Runner = { connection: Connection; alive: boolean };

async function drive(options: {
  target: Target;
  concurrency: number;
  durationMs: number;
  requests: number | undefined;
  timeoutMs: number;
  once: (runner: Runner) => Promise<void>;
}): Promise<number> {
  const deadline = performance.now() + options.durationMs;
  let started = 0;
  const t0 = performance.now();
  const worker = async () => {
    const runner: Runner = { connection: new Connection(options.target), alive: true };
    while (performance.now() < deadline) {
      if (options.requests !== undefined && started >= options.requests) break;
      started++;
      await options.once(runner);
    }
    runner.connection.destroy();
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  return performance.now() - t0;
}

/** Fixed concurrency, one request in flight per connection, for a duration or a count. */
export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const t = target(options);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const latencies: number[] = [];
  const statuses: Record<number, number> = {};
  let errors = 0;
  let non2xx = 0;
  const elapsedMs = await drive({
    target: t,
    concurrency: options.concurrency,
    durationMs: options.durationMs ?? (options.requests === undefined ? 3000 : 600_000),
    requests: options.requests,
    timeoutMs,
    once: async (runner) => {
      const start = performance.now();
      try {
        const response = await runner.connection.send(timeoutMs);
        latencies.push(performance.now() - start);
        statuses[response.status] = (statuses[response.status] ?? 0) + 1;
        if (response.status < 200 || response.status >= 300) non2xx++;
      } catch {
        errors++;
        runner.connection.destroy();
        runner.connection = new Connection(t);
      }
    },
  });
  const requests = latencies.length + errors;
  return {
    requests,
    errors,
    non2xx,
    statuses,
    elapsedMs,
    rps: (latencies.length / elapsedMs) * 1000,
    latencyMs: percentiles(latencies),
  };
}

/** Streaming (SSE) load: `concurrency` streams at a time; measures TTFB and event gaps. */
export async function runStreams(options: StreamOptions): Promise<StreamResult> {
  const t = target(options);
  const timeoutMs = options.timeoutMs ?? 60_000;
  const ttfb: number[] = [];
  const gaps: number[] = [];
  let streams = 0;
  let errors = 0;
  let non2xx = 0;
  let events = 0;
  const elapsedMs = await drive({
    target: t,
    concurrency: options.concurrency,
    durationMs: options.durationMs ?? (options.requests === undefined ? 5000 : 600_000),
    requests: options.requests,
    timeoutMs,
    once: async (runner) => {
      const start = performance.now();
      let last = -1;
      try {
        const response = await runner.connection.send(timeoutMs, {
          onEvents: (at, count) => {
            if (last < 0) ttfb.push(at - start);
            else gaps.push(at - last);
            for (let i = 1; i < count; i++) gaps.push(0);
            last = at;
            events += count;
          },
        });
        streams++;
        if (response.status < 200 || response.status >= 300) non2xx++;
      } catch {
        errors++;
        runner.connection.destroy();
        runner.connection = new Connection(t);
      }
    },
  });
  return {
    streams,
    errors,
    non2xx,
    events,
    elapsedMs,
    eventsPerSecond: (events / elapsedMs) * 1000,
    ttfbMs: percentiles(ttfb),
    gapMs: percentiles(gaps),
  };
}

/** One line for a report: `12,345 req/s  p50 1.2 ms  p99 4.5 ms  errors 0`. */
export function formatLoad(result: LoadResult): string {
  const ms = (value: number) => `${value.toFixed(2)} ms`;
  return `${Math.round(result.rps).toLocaleString("en-US")} req/s  p50 ${ms(result.latencyMs.p50)}  p99 ${ms(result.latencyMs.p99)}  requests ${result.requests}  errors ${result.errors}  non-2xx ${result.non2xx}`;
}

export function formatStreams(result: StreamResult): string {
  const ms = (value: number) => `${value.toFixed(2)} ms`;
  return `${result.streams} streams  ${Math.round(result.eventsPerSecond).toLocaleString("en-US")} events/s  TTFB p50 ${ms(result.ttfbMs.p50)} p99 ${ms(result.ttfbMs.p99)}  gap p50 ${ms(result.gapMs.p50)} p99 ${ms(result.gapMs.p99)}  errors ${result.errors}  non-2xx ${result.non2xx}`;
}
