import type { Socket, SocketHandler } from "bun";
import { ProtocolError, type ResponseHead, ResponseParser } from "./http1-parser.ts";

/**
 * A `fetch` for the router's hop to agents on Bun: HTTP/1.1 over Bun's own TCP and TLS
 * sockets, with a keep-alive pool per origin.
 *
 * Why not Bun's `fetch`: measured side by side (bench/gateway.ts; figures and the decision in
 * docs/router.md "The upstream client on Bun"), Bun's `fetch` matched it on throughput but
 * held a median 25-32 MiB more with 1,000 streams, and it has no connect timeout, so a
 * replica whose TLS handshake never completes holds a request until the first-byte timeout.
 *
 *   const client = createHttp1Fetch({ connectTimeoutMs: 5000 });
 *   const response = await client.fetch("http://10.0.0.7:6006/proxy/m/v1/chat/completions", {
 *     method: "POST", headers, body, signal,
 *   });
 *   client.close();
 *
 * What it handles: `http:` and `https:` URLs given as strings or URLs, a string or bytes
 * body (or none), `redirect: "manual"`-style behaviour (a 3xx is returned as is), abort
 * signals before and after the head. Everything else (a `Request` object, a stream or form
 * body, a request HTTP(S)_PROXY sends through a proxy) goes to `fallback` (the runtime's
 * `fetch`). TLS is verified the way Bun verifies it
 * (its bundled roots plus `NODE_EXTRA_CA_CERTS`), with the URL's host as the server name.
 * Responses are not decompressed: it asks for `Accept-Encoding: identity` unless the caller
 * set that header. Answers with a Content-Length up to 256 KiB (not event streams) are read
 * whole before the promise resolves. Responses are parsed strictly (http1-parser.ts); a
 * request is replayed only as `replayable` below allows.
 */

export type FetchFn = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

export type Http1FetchOptions = {
  /** TCP connect plus TLS handshake (default 5 s). */
  connectTimeoutMs?: number;
  /**
   * A pooled connection idle this long is closed (default 4 s: under the idle limits of
   * common servers — Bun's is 10 s, uvicorn's 5 s — so we close first, not they).
   */
  keepAliveMs?: number;
  /** Idle connections kept per origin (default 256). */
  maxIdlePerOrigin?: number;
  /** Largest response head accepted (default 64 KiB). */
  maxHeadBytes?: number;
  /** Most header fields in a response head (default 100). */
  maxHeaders?: number;
  /** For requests this client does not handle (default: the global `fetch`). */
  fallback?: FetchFn;
  /**
   * Where HTTP_PROXY / HTTPS_PROXY / NO_PROXY are read (default `process.env`). A request the
   * environment sends through a proxy goes to `fallback`: Bun's fetch speaks to proxies.
   */
  env?: Record<string, string | undefined>;
};

export type Http1Fetch = {
  fetch: FetchFn;
  /** Connections open now, and how many of them sit idle in the pool. */
  stats(): { open: number; idle: number };
  /** Closes idle connections and stops the pool's sweeper; in-flight requests finish. */
  close(): void;
};

type Origin = {
  key: string;
  hostname: string;
  port: number;
  tls: boolean;
  hostHeader: string;
  /** Set on first use when a proxy is configured: the environment proxies this origin. */
  proxied?: boolean;
};

/** One request as written on the wire: its origin, method, head text and body. */
type Outgoing = {
  origin: Origin;
  method: string;
  head: string;
  body: Uint8Array | undefined;
  signal: AbortSignal | undefined;
};

/**
 * One request and its response on one connection. A class, and its own abort listener
 * (`handleEvent`), so that a request allocates no closures.
 */
class Exchange {
  controller: ReadableStreamDefaultController<Uint8Array> | undefined = undefined;
  /** A small body with a Content-Length, collected whole before the promise resolves. */
  small: { head: ResponseHead; bytes: Uint8Array<ArrayBuffer>; filled: number } | undefined =
    undefined;
  /** The head arrived (the promise is settled); errors now go to the body. */
  answered = false;
  /** Any response byte arrived: a failure is no longer a stale keep-alive connection. */
  heard = false;
  /** Request bytes not yet accepted by the socket. */
  unsent: Uint8Array | undefined = undefined;
  /** Any request byte was accepted by the socket: the server may have acted on it. */
  sent = false;

  constructor(
    readonly conn: Connection,
    readonly request: Outgoing,
    readonly resolve: (response: Response) => void,
    readonly reject: (error: unknown) => void,
    /** Once, on a new connection, when a reused one dies before answering (`replayable`). */
    public retry: boolean,
    private readonly onAbort: (exchange: Exchange) => void,
  ) {}

  get method(): string {
    return this.request.method;
  }

  /** The request's signal aborted. */
  handleEvent(): void {
    this.onAbort(this);
  }

  /** Stops listening to the request's signal (the exchange is over, one way or another). */
  unlisten(): void {
    this.request.signal?.removeEventListener("abort", this);
  }
}

type Connection = {
  origin: Origin;
  socket: Socket<Connection> | undefined;
  parser: ResponseParser;
  exchange: Exchange | undefined;
  /** Served a request before: its death before any byte may be the server's idle close. */
  reused: boolean;
  idleSince: number;
  closed: boolean;
  /** Reading stopped because the body's reader fell behind. */
  paused: boolean;
  /** Resolves the connect wait (TLS: after a verified handshake). */
  ready: ((error?: Error) => void) | undefined;
};

const defaults = {
  connectTimeoutMs: 5000,
  keepAliveMs: 4000,
  maxIdlePerOrigin: 256,
  maxHeadBytes: 64 * 1024,
  maxHeaders: 100,
};
const encoder = new TextEncoder();
const headerName = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
const methodToken = /^[!#$%&'*+\-.^_`|~0-9A-Z]+$/;
/** CONNECT turns the connection into a tunnel; TRACE and TRACK are refused as fetch does. */
const forbiddenMethods = new Set(["CONNECT", "TRACE", "TRACK"]);
/** RFC 9110 §9.2.2: sending one of these twice has the effect of sending it once. */
const idempotentMethods = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]);
const unsafeValue = /[\r\n\0]/;
/** `http(s)://host[:port]` and a printable-ASCII path without a fragment: no URL parser needed. */
const simpleUrl =
  /^(https?:)\/\/([A-Za-z0-9.-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?)(\/[!"$-~]*)?$/;
/** Set by this client from the body and the connection, never taken from the caller. */
const framingHeaders = new Set([
  "host",
  "connection",
  "content-length",
  "transfer-encoding",
  "keep-alive",
]);
/** Below this, the head and body go out in one write (one packet, one syscall). */
const coalesceBytes = 64 * 1024;
/** Bodies with a Content-Length up to this are read whole before `fetch` resolves. */
const smallBody = 256 * 1024;
/** Response body queued for a slow reader before the socket stops reading. */
const bodyHighWater = 256 * 1024;

function fetchFailed(origin: Origin, reason: string, cause?: unknown): TypeError {
  return new TypeError(`fetch to ${origin.key} failed: ${reason}`, { cause });
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("The operation was aborted.", "AbortError");
}

export function createHttp1Fetch(options: Http1FetchOptions = {}): Http1Fetch {
  const config = { ...defaults, ...options };
  const fallback: FetchFn = options.fallback ?? ((input, init) => fetch(input, init));
  const idle = new Map<string, Connection[]>();
  let open = 0;
  let idleCount = 0;
  let sweeper: ReturnType<typeof setInterval> | undefined;

  const destroy = (conn: Connection) => {
    if (conn.closed) return;
    conn.closed = true;
    open--;
    conn.socket?.terminate();
  };

  const removeIdle = (conn: Connection) => {
    const list = idle.get(conn.origin.key);
    const index = list?.indexOf(conn) ?? -1;
    if (list && index >= 0) {
      list.splice(index, 1);
      idleCount--;
    }
  };

  const park = (conn: Connection) => {
    conn.exchange = undefined;
    const list = idle.get(conn.origin.key) ?? [];
    if (conn.closed || list.length >= config.maxIdlePerOrigin) return destroy(conn);
    conn.reused = true;
    conn.idleSince = performance.now();
    list.push(conn);
    idle.set(conn.origin.key, list);
    idleCount++;
    sweeper ??= setInterval(sweep, Math.max(250, Math.min(config.keepAliveMs / 2, 5000)));
    sweeper.unref?.();
  };

  const sweep = () => {
    const cutoff = performance.now() - config.keepAliveMs;
    for (const [key, list] of idle) {
      // Oldest first: connections are taken from and returned to the end.
      while (list.length > 0 && (list[0] as Connection).idleSince <= cutoff) {
        const conn = list.shift() as Connection;
        idleCount--;
        destroy(conn);
      }
      if (list.length === 0) idle.delete(key);
    }
    if (idleCount === 0 && sweeper) {
      clearInterval(sweeper);
      sweeper = undefined;
    }
  };

  /** Ends the current exchange with an error, wherever it stands. */
  const failExchange = (conn: Connection, error: unknown) => {
    const exchange = conn.exchange;
    if (!exchange) return;
    conn.exchange = undefined;
    exchange.unlisten();
    if (exchange.answered) {
      try {
        exchange.controller?.error(error);
      } catch {
        // already closed or errored by the reader
      }
    } else if (exchange.retry && replayable(exchange)) {
      // A new connection, never another pooled one that may be just as stale.
      destroy(conn);
      connectAndSend(exchange.request, false).then(exchange.resolve, exchange.reject);
    } else {
      exchange.reject(
        // The ProtocolError stays the cause: the router tells a malformed answer from a
        // failed connection by it (router/answer-check.ts).
        error instanceof ProtocolError ? fetchFailed(conn.origin, error.message, error) : error,
      );
    }
  };

  const onHead = (conn: Connection, head: ResponseHead) => {
    const exchange = conn.exchange;
    if (!exchange) return;
    const small = !head.bodyless && head.bodyLength !== null && head.bodyLength <= smallBody;
    // An event stream is relayed as it comes even when the server gave it a length.
    if (small && !(head.headers.get("content-type") ?? "").includes("text/event-stream")) {
      // A unary answer (a completion, an error): one native-backed Response at the end is
      // far cheaper for the caller to read than a stream, and nobody reads half a JSON.
      exchange.small = { head, bytes: new Uint8Array(head.bodyLength ?? 0), filled: 0 };
      return;
    }
    exchange.answered = true;
    let body: ReadableStream<Uint8Array> | null = null;
    if (!head.bodyless) {
      body = new ReadableStream<Uint8Array>(
        {
          start(controller) {
            exchange.controller = controller;
          },
          pull() {
            if (!conn.paused) return;
            conn.paused = false;
            conn.socket?.resume();
          },
          cancel() {
            // The reader gave up mid-body: the connection is out of step, so it goes.
            if (conn.exchange !== exchange) return;
            conn.exchange = undefined;
            exchange.unlisten();
            destroy(conn);
          },
        },
        { highWaterMark: bodyHighWater, size: (chunk) => chunk?.byteLength ?? 0 },
      );
    }
    exchange.resolve(
      new Response(body, {
        status: head.status,
        statusText: head.statusText,
        headers: head.headers,
      }),
    );
  };

  const parserFor = (conn: () => Connection) =>
    new ResponseParser(
      {
        onHead: (head) => onHead(conn(), head),
        onBody(chunk) {
          const c = conn();
          const { exchange, socket } = c;
          const small = exchange?.small;
          if (small) {
            small.bytes.set(chunk, small.filled);
            small.filled += chunk.byteLength;
            return;
          }
          const controller = exchange?.controller;
          if (!controller) return;
          controller.enqueue(chunk);
          if ((controller.desiredSize ?? 1) <= 0 && !c.paused) {
            c.paused = true;
            socket?.pause();
          }
        },
        onEnd(reusable) {
          const c = conn();
          const exchange = c.exchange;
          if (!exchange) return;
          exchange.unlisten();
          const small = exchange.small;
          if (small) {
            exchange.answered = true;
            exchange.resolve(
              new Response(small.bytes, {
                status: small.head.status,
                statusText: small.head.statusText,
                headers: small.head.headers,
              }),
            );
          }
          try {
            exchange.controller?.close();
          } catch {
            // the reader cancelled in the meantime
          }
          if (reusable && !exchange.unsent) park(c);
          else {
            c.exchange = undefined;
            destroy(c);
          }
        },
        onError(error) {
          const c = conn();
          failExchange(c, error);
          removeIdle(c);
          destroy(c);
        },
      },
      { maxHeadBytes: config.maxHeadBytes, maxHeaders: config.maxHeaders },
    );

  const handlers: SocketHandler<Connection> = {
    // Plain Uint8Arrays (the type still says Buffer): what a web body stream should carry.
    binaryType: "uint8array",
    open(socket) {
      if (!socket.data.origin.tls) socket.data.ready?.();
    },
    handshake(socket, success, authorizationError) {
      const ready = socket.data.ready;
      if (success) return ready?.();
      ready?.(new Error(authorizationError?.message ?? "TLS handshake failed"));
    },
    data(socket, bytes) {
      const conn = socket.data;
      if (conn.exchange) conn.exchange.heard = true;
      conn.parser.push(bytes);
    },
    drain(socket) {
      const exchange = socket.data.exchange;
      if (exchange?.unsent) exchange.unsent = write(exchange, socket, exchange.unsent);
    },
    close(socket, error) {
      const conn = socket.data;
      conn.ready?.(error ?? new Error("connection closed during connect"));
      if (!conn.closed) {
        conn.closed = true;
        open--;
      }
      removeIdle(conn);
      if (conn.exchange) {
        conn.parser.closed();
        // The parser ended a close-delimited body, or reported the early close.
        failExchange(conn, new Error("connection closed"));
      }
    },
    error(socket, error) {
      const conn = socket.data;
      failExchange(conn, fetchFailed(conn.origin, error.message, error));
    },
    connectError(socket, error) {
      socket.data.ready?.(error);
    },
  };

  /** Opens a connection; resolves once it can carry a request. */
  const connect = (origin: Origin): Promise<Connection> => {
    const conn: Connection = {
      origin,
      socket: undefined,
      parser: undefined as unknown as ResponseParser,
      exchange: undefined,
      reused: false,
      idleSince: 0,
      closed: false,
      paused: false,
      ready: undefined,
    };
    conn.parser = parserFor(() => conn);
    open++;
    return new Promise<Connection>((resolve, reject) => {
      const timer = setTimeout(() => {
        conn.ready?.(new Error(`connect timeout after ${config.connectTimeoutMs} ms`));
      }, config.connectTimeoutMs);
      conn.ready = (error) => {
        conn.ready = undefined;
        clearTimeout(timer);
        if (error) {
          destroy(conn);
          reject(fetchFailed(origin, error.message, error));
        } else {
          resolve(conn);
        }
      };
      Bun.connect<Connection>({
        hostname: origin.hostname,
        port: origin.port,
        tls: origin.tls ? { serverName: origin.hostname } : undefined,
        data: conn,
        socket: handlers,
      }).then(
        (socket) => {
          conn.socket = socket;
          socket.setNoDelay(true);
          // Timed out or failed while connecting: nobody wants this socket any more.
          if (conn.closed) socket.terminate();
        },
        (error: Error) => conn.ready?.(error),
      );
    });
  };

  const take = (origin: Origin): Connection | undefined => {
    const list = idle.get(origin.key);
    // The sweeper runs every keepAliveMs / 2; past the limit a connection is never reused.
    const cutoff = performance.now() - config.keepAliveMs;
    while (list && list.length > 0) {
      const conn = list.pop() as Connection;
      idleCount--;
      const usable = !conn.closed && conn.socket?.readyState === 1 && conn.idleSince > cutoff;
      if (usable) return conn;
      destroy(conn);
    }
    return undefined;
  };

  /** Sends on a pooled connection when one is free (no await), else on a new one. */
  const send = (request: Outgoing, allowRetry: boolean): Promise<Response> => {
    const pooled = take(request.origin);
    if (pooled) return exchangeOn(pooled, request, allowRetry);
    return connectAndSend(request, allowRetry);
  };

  const connectAndSend = async (request: Outgoing, allowRetry: boolean): Promise<Response> => {
    const connecting = connect(request.origin);
    const { signal } = request;
    let conn: Connection;
    if (signal) {
      // An abort while connecting rejects now; the connection closes once it opens.
      const aborted = new Promise<never>((_, reject) => {
        const onAbort = () => reject(abortReason(signal));
        if (signal.aborted) onAbort();
        else signal.addEventListener("abort", onAbort, { once: true });
        connecting.finally(() => signal.removeEventListener("abort", onAbort)).catch(() => {});
      });
      conn = await Promise.race([connecting, aborted]).catch((error: unknown) => {
        connecting.then(destroy, () => {});
        throw error;
      });
    } else {
      conn = await connecting;
    }
    return exchangeOn(conn, request, allowRetry);
  };

  /** Writes one request on `conn` and settles with its response head. */
  const exchangeOn = (
    conn: Connection,
    request: Outgoing,
    allowRetry: boolean,
  ): Promise<Response> => {
    const { method, head, body, signal } = request;
    const socket = conn.socket as Socket<Connection>;
    return new Promise<Response>((resolve, reject) => {
      const exchange = new Exchange(
        conn,
        request,
        resolve,
        reject,
        conn.reused && allowRetry,
        abortExchange,
      );
      if (signal) {
        if (signal.aborted) {
          park(conn);
          reject(abortReason(signal));
          return;
        }
        signal.addEventListener("abort", exchange, { once: true });
      }
      conn.exchange = exchange;
      conn.parser.expect(method);
      if (!body || body.byteLength <= coalesceBytes) {
        // Head and body in one buffer, one write.
        const bytes = new Uint8Array(head.length * 3 + (body?.byteLength ?? 0));
        const { written } = encoder.encodeInto(head, bytes);
        if (body) bytes.set(body, written);
        exchange.unsent = write(
          exchange,
          socket,
          bytes.subarray(0, written + (body?.byteLength ?? 0)),
        );
      } else {
        const rest = write(exchange, socket, encoder.encode(head));
        exchange.unsent = rest ? concat(rest, body) : write(exchange, socket, body);
      }
    });
  };

  const abortExchange = (exchange: Exchange) => {
    const conn = exchange.conn;
    if (conn.exchange !== exchange) return;
    exchange.retry = false;
    failExchange(conn, abortReason(exchange.request.signal as AbortSignal));
    destroy(conn);
  };

  const proxyRules = readProxyEnv(options.env ?? process.env);
  /** Whether the environment routes this origin through a proxy (decided once per origin). */
  const proxied = (origin: Origin): boolean => {
    if (!proxyRules.http && !proxyRules.https) return false;
    origin.proxied ??= usesProxy(proxyRules, origin);
    return origin.proxied;
  };
  const origins = new Map<string, Origin>();
  /** Header name as given → its lower-case form, once it passed the token check. */
  const checkedNames = new Map<string, string>();
  const originOf = (url: URL): Origin => {
    const key = `${url.protocol}//${url.host}`;
    let origin = origins.get(key);
    if (!origin) {
      const tls = url.protocol === "https:";
      origin = {
        key,
        hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
        port: url.port ? Number(url.port) : tls ? 443 : 80,
        tls,
        hostHeader: url.host,
      };
      // Workers are few; a bound keeps a client fed arbitrary URLs from growing forever.
      if (origins.size >= 4096) origins.clear();
      origins.set(key, origin);
    }
    return origin;
  };

  /** Origin and request target; plain `http(s)://host[:port]/path` strings skip `new URL`. */
  const target = (input: string | URL): { origin: Origin; path: string; url?: URL } | null => {
    if (typeof input === "string") {
      const match = simpleUrl.exec(input);
      if (match) {
        const key = `${match[1]}//${match[2]}`;
        const origin = origins.get(key);
        if (origin) return { origin, path: match[3] || "/" };
      }
    }
    const url = typeof input === "string" ? new URL(input) : input;
    if (url.protocol !== "http:" && url.protocol !== "https:") return null;
    return { origin: originOf(url), path: `${url.pathname}${url.search}`, url };
  };

  const http1Fetch: FetchFn = (input, init) => {
    try {
      return request(input, init);
    } catch (error) {
      return Promise.reject(error);
    }
  };

  const request = (input: string | URL | Request, init: RequestInit | undefined) => {
    const body = init?.body;
    const bodyBytes =
      body === undefined || body === null
        ? undefined
        : typeof body === "string"
          ? encoder.encode(body)
          : body instanceof Uint8Array
            ? body
            : body instanceof ArrayBuffer
              ? new Uint8Array(body)
              : null;
    if (typeof input !== "string" && !(input instanceof URL)) return fallback(input, init);
    const where = bodyBytes === null ? null : target(input);
    if (!where || proxied(where.origin)) return fallback(input, init);
    const { origin, path, url } = where;
    const method = (init?.method ?? "GET").toUpperCase();
    // The method goes on the wire as is: a token, or the request could be split.
    if (!methodToken.test(method) || forbiddenMethods.has(method)) {
      throw new TypeError(`invalid method: ${JSON.stringify(init?.method)}`);
    }
    let head = `${method} ${path} HTTP/1.1\r\nhost: ${origin.hostHeader}\r\n`;
    let acceptEncoding = false;
    let authorization = false;
    const add = (rawName: string, value: string) => {
      let name = checkedNames.get(rawName);
      if (name === undefined) {
        name = rawName.toLowerCase();
        if (!headerName.test(name)) throw new TypeError(`invalid header: ${rawName}`);
        // Header names repeat on every request: remember the few that passed.
        if (checkedNames.size < 1024) checkedNames.set(rawName, name);
      }
      if (unsafeValue.test(value)) throw new TypeError(`invalid header: ${rawName}`);
      if (framingHeaders.has(name)) return;
      if (name === "accept-encoding") acceptEncoding = true;
      if (name === "authorization") authorization = true;
      head += `${name}: ${value}\r\n`;
    };
    // A plain record (what the router passes) is read as is: no Headers object per request.
    const headers = init?.headers;
    if (headers instanceof Headers) {
      for (const [name, value] of headers) add(name, value);
    } else if (Array.isArray(headers)) {
      for (const [name, value] of headers) add(name, value);
    } else if (headers) {
      for (const name in headers) add(name, String(headers[name]));
    }
    if (!authorization && url && (url.username || url.password)) {
      const credentials = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
      head += `authorization: Basic ${btoa(credentials)}\r\n`;
    }
    if (!acceptEncoding) head += "accept-encoding: identity\r\n";
    if (bodyBytes !== undefined || (method !== "GET" && method !== "HEAD")) {
      head += `content-length: ${bodyBytes?.byteLength ?? 0}\r\n`;
    }
    head += "\r\n";
    const signal = init?.signal ?? undefined;
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return send({ origin, method, head, body: bodyBytes ?? undefined, signal }, true);
  };

  return {
    fetch: http1Fetch,
    stats: () => ({ open, idle: idleCount }),
    close() {
      for (const list of idle.values()) for (const conn of list) destroy(conn);
      idle.clear();
      idleCount = 0;
      if (sweeper) clearInterval(sweeper);
      sweeper = undefined;
    },
  };
}

/**
 * Writes what the socket takes now and notes whether any byte went out; returns the rest
 * (sent on `drain`), or undefined.
 */
function write(
  exchange: Exchange,
  socket: Socket<Connection>,
  bytes: Uint8Array,
): Uint8Array | undefined {
  const written = socket.write(bytes);
  if (written <= 0) return bytes; // full, or closing: then the close handler fails the exchange
  exchange.sent = true;
  return written < bytes.byteLength ? bytes.subarray(written) : undefined;
}

/**
 * The replay policy. A reused connection that dies before any byte of the answer is most
 * often the server closing it as idle just as the request went out. The request is sent
 * again, once and on a new connection, only when no response byte arrived and either none
 * of its bytes left (the server cannot have seen it) or its method is idempotent. A POST
 * that went out is never replayed here: the caller gets the error and decides (the router
 * retries on another replica before the first byte; docs/router.md "Failure handling").
 */
function replayable(exchange: Exchange): boolean {
  if (exchange.heard) return false;
  return !exchange.sent || idempotentMethods.has(exchange.method);
}

function concat(first: Uint8Array, second: Uint8Array): Uint8Array {
  const joined = new Uint8Array(first.byteLength + second.byteLength);
  joined.set(first);
  joined.set(second, first.byteLength);
  return joined;
}

type ProxyRules = { http: boolean; https: boolean; noProxy: string[] };

function readProxyEnv(env: Record<string, string | undefined>): ProxyRules {
  const noProxy = (env.NO_PROXY ?? env.no_proxy ?? "")
    .split(/[\s,]+/)
    .map((entry) => entry.trim().toLowerCase())
    .filter(Boolean);
  return {
    http: Boolean(env.HTTP_PROXY || env.http_proxy),
    https: Boolean(env.HTTPS_PROXY || env.https_proxy),
    noProxy,
  };
}

/** curl's rules: a proxy for the scheme, unless NO_PROXY names the host (or a parent). */
function usesProxy(rules: ProxyRules, origin: Origin): boolean {
  if (!(origin.tls ? rules.https : rules.http)) return false;
  const host = origin.hostname.toLowerCase();
  for (const entry of rules.noProxy) {
    if (entry === "*") return false;
    let name = entry;
    let port: string | undefined;
    if (entry.startsWith("[")) {
      name = entry.slice(1, entry.indexOf("]"));
      port = entry.slice(entry.indexOf("]") + 2) || undefined;
    } else if (entry.split(":").length === 2) {
      [name = "", port] = entry.split(":");
    }
    if (port !== undefined && Number(port) !== origin.port) continue;
    const bare = name.replace(/^\*?\./, "");
    if (host === bare || host.endsWith(`.${bare}`)) return false;
  }
  return true;
}
