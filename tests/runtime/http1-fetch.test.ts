import { afterAll, afterEach, describe, expect, test } from "bun:test";
import type { Socket, TCPSocketListener } from "bun";
import { eventually } from "../../devkit/net.ts";
import { bunBin, repoRoot } from "../../devkit/proc.ts";
import { createHttp1Fetch, type Http1Fetch } from "../../runtime/http1-fetch.ts";

const certPath = `${repoRoot}/tests/fixtures/tls/cert.pem`;
const keyPath = `${repoRoot}/tests/fixtures/tls/key.pem`;

const clients: Http1Fetch[] = [];
const servers: Array<{ stop(force?: boolean): unknown }> = [];
function client(options: Parameters<typeof createHttp1Fetch>[0] = {}): Http1Fetch {
  const made = createHttp1Fetch(options);
  clients.push(made);
  return made;
}
afterEach(() => {
  for (const made of clients.splice(0)) made.close();
});
afterAll(() => {
  for (const server of servers) server.stop(true);
});

/** A real Bun HTTP server on a loopback port chosen by the OS. */
function serve(
  handler: (request: Request, server: Bun.Server<undefined>) => Response | Promise<Response>,
) {
  const server = Bun.serve({ hostname: "127.0.0.1", port: 0, idleTimeout: 30, fetch: handler });
  servers.push(server);
  return { server, url: `http://127.0.0.1:${server.port}` };
}

/** A raw TCP server that answers each request with whatever `respond` writes. */
function rawServer(respond: (socket: Socket<{ requests: number }>, request: string) => void): {
  url: string;
  connections: () => number;
  listener: TCPSocketListener<{ requests: number }>;
} {
  let connections = 0;
  const listener = Bun.listen<{ requests: number }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        connections++;
        socket.data = { requests: 0 };
      },
      data(socket, data) {
        const text = data.toString("latin1");
        if (!text.includes("\r\n\r\n")) return;
        socket.data.requests++;
        respond(socket, text);
      },
    },
  });
  servers.push(listener);
  return { url: `http://127.0.0.1:${listener.port}`, connections: () => connections, listener };
}

async function sha256(bytes: ArrayBuffer | Uint8Array<ArrayBuffer>): Promise<string> {
  return Buffer.from(await crypto.subtle.digest("SHA-256", bytes)).toString("hex");
}

describe("http1 fetch", () => {
  test("sends method, path, headers and body, and reads status, headers and body", async () => {
    const { url } = serve(async (request) => {
      const body = await request.text();
      return Response.json(
        {
          method: request.method,
          path: new URL(request.url).pathname + new URL(request.url).search,
          host: request.headers.get("host"),
          auth: request.headers.get("authorization"),
          encoding: request.headers.get("accept-encoding"),
          length: request.headers.get("content-length"),
          body,
        },
        { status: 201, headers: { "x-reply": "yes" } },
      );
    });
    const { fetch } = client();
    const response = await fetch(`${url}/proxy/m/v1/chat?x=1`, {
      method: "POST",
      headers: { authorization: "Bearer token", "content-type": "application/json" },
      body: '{"model":"m"}',
    });
    expect(response.status).toBe(201);
    expect(response.headers.get("x-reply")).toBe("yes");
    expect(await response.json()).toEqual({
      method: "POST",
      path: "/proxy/m/v1/chat?x=1",
      host: url.slice("http://".length),
      auth: "Bearer token",
      encoding: "identity",
      length: "13",
      body: '{"model":"m"}',
    });
  });

  test("sends the request target as fetch would, with or without the URL parser", async () => {
    const { url } = serve((request) => {
      const target = new URL(request.url);
      return new Response(target.pathname + target.search);
    });
    const { fetch } = client();
    const paths = [
      "/proxy/m/v1/chat/completions", // first sight of the origin: parsed with URL
      "/proxy/m/v1/chat/completions?x=1&y=%20", // known origin: taken as is
      "/a b?q=c d#fragment", // not plain: URL encodes it and drops the fragment
    ];
    const seen = [];
    for (const path of paths) seen.push(await (await fetch(`${url}${path}`)).text());
    expect(seen).toEqual([
      "/proxy/m/v1/chat/completions",
      "/proxy/m/v1/chat/completions?x=1&y=%20",
      "/a%20b?q=c%20d",
    ]);
  });

  test("keeps one connection alive across sequential requests", async () => {
    const ports = new Set<number>();
    const { url } = serve((request, server) => {
      ports.add(server.requestIP(request)?.port ?? 0);
      return new Response("ok");
    });
    const http = client();
    for (let i = 0; i < 20; i++) {
      const response = await http.fetch(`${url}/`, { method: "POST", body: String(i) });
      expect(await response.text()).toBe("ok");
    }
    expect(ports.size).toBe(1);
    expect(http.stats()).toEqual({ open: 1, idle: 1 });
  });

  test("closes pooled connections once they sit idle past keepAliveMs", async () => {
    const { url } = serve(() => new Response("ok"));
    const http = client({ keepAliveMs: 200 });
    await (await http.fetch(`${url}/`)).text();
    expect(http.stats().idle).toBe(1);
    await eventually(() => http.stats().open === 0, { timeoutMs: 3000, what: "idle close" });
    expect(http.stats()).toEqual({ open: 0, idle: 0 });
  });

  test("streams a chunked body as it is produced", async () => {
    let release: (() => void) | undefined;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const { url } = serve(
      () =>
        new Response(
          new ReadableStream({
            async start(controller) {
              controller.enqueue(new TextEncoder().encode("data: one\n\n"));
              await gate;
              controller.enqueue(new TextEncoder().encode("data: two\n\n"));
              controller.close();
            },
          }),
          { headers: { "content-type": "text/event-stream" } },
        ),
    );
    const response = await client().fetch(`${url}/`, { method: "POST", body: "{}" });
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    // The first event arrived while the server still holds the second one back.
    expect(new TextDecoder().decode(first.value)).toBe("data: one\n\n");
    release?.();
    let rest = "";
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      rest += new TextDecoder().decode(chunk.value);
    }
    expect(rest).toBe("data: two\n\n");
  });

  test("an event stream with a Content-Length still arrives event by event", async () => {
    const events = ["data: one\n\n", "data: two\n\n"];
    const length = events.join("").length;
    // The server sends the second event only when the test says so.
    let sendSecond: (() => void) | undefined;
    let secondSent = false;
    const server = rawServer((socket) => {
      socket.write(
        `HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: ${length}\r\n\r\n${events[0]}`,
      );
      sendSecond = () => {
        secondSent = true;
        socket.write(events[1] ?? "");
      };
    });
    const response = await client().fetch(`${server.url}/`, { method: "POST", body: "{}" });
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toBe("data: one\n\n");
    // The first event came before the server sent the second.
    expect(secondSent).toBe(false);
    sendSecond?.();
    const second = await reader.read();
    expect(new TextDecoder().decode(second.value)).toBe("data: two\n\n");
  });

  test("reads a small answer with a Content-Length whole before resolving", async () => {
    let sendRest: (() => void) | undefined;
    let restSent = false;
    const server = rawServer((socket) => {
      socket.write(
        'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":',
      );
      sendRest = () => {
        restSent = true;
        socket.write("true}");
      };
    });
    // Resolving must wait for the rest of the body, which the server holds back.
    const pending = client()
      .fetch(`${server.url}/`, { method: "POST", body: "{}" })
      .then((response) => ({ response, restSentFirst: restSent }));
    await eventually(() => sendRest !== undefined, { what: "the head and half the body sent" });
    // Time for an early resolve to happen, if the client would resolve early (not a bound).
    await Bun.sleep(50);
    sendRest?.();
    const { response, restSentFirst } = await pending;
    expect(restSentFirst).toBe(true);
    expect(await response.json()).toEqual({ ok: true });
  });

  test("sends a large body through socket backpressure intact", async () => {
    const { url } = serve(
      async (request) => new Response(await sha256(await request.arrayBuffer())),
    );
    const body = crypto.getRandomValues(new Uint8Array(8 * 1024 * 1024 + 17));
    const response = await client().fetch(`${url}/`, { method: "POST", body });
    expect(await response.text()).toBe(await sha256(body));
  });

  test("reads a large body through a slow reader intact", async () => {
    const payload = crypto.getRandomValues(new Uint8Array(16 * 1024 * 1024));
    const { url } = serve(() => new Response(payload));
    const response = await client().fetch(`${url}/`);
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const parts: Uint8Array[] = [];
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      parts.push(chunk.value);
      if (parts.length % 8 === 0) await Bun.sleep(1);
    }
    expect(await sha256(Buffer.concat(parts))).toBe(await sha256(payload));
  });

  test("an abort before the answer rejects with the reason and drops the connection", async () => {
    let serverSaw: boolean | undefined;
    let received = false;
    const { url } = serve(async (request) => {
      received = true;
      await new Promise<void>((resolve) =>
        request.signal.addEventListener("abort", () => resolve()),
      );
      serverSaw = request.signal.aborted;
      return new Response("too late");
    });
    const http = client();
    const controller = new AbortController();
    const pending = http.fetch(`${url}/`, {
      method: "POST",
      body: "{}",
      signal: controller.signal,
    });
    await eventually(() => received, { what: "the server to receive the request" });
    controller.abort(new Error("client went away"));
    await expect(pending).rejects.toThrow("client went away");
    await eventually(() => serverSaw, { what: "the server to see the abort" });
    expect(http.stats().open).toBe(0);
  });

  test("an abort mid-body errors the body and drops the connection", async () => {
    const { url } = serve(
      () =>
        new Response(
          new ReadableStream({
            start(controller) {
              controller.enqueue(new TextEncoder().encode("data: first\n\n"));
            },
          }),
        ),
    );
    const http = client();
    const controller = new AbortController();
    const response = await http.fetch(`${url}/`, { method: "POST", signal: controller.signal });
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    controller.abort(new Error("idle timeout"));
    await expect(reader.read()).rejects.toThrow("idle timeout");
    expect(http.stats().open).toBe(0);
  });

  test("cancelling the body drops the connection instead of reusing it mid-response", async () => {
    const { url } = serve(
      () =>
        new Response(
          new ReadableStream({
            start(controller) {
              controller.enqueue(new TextEncoder().encode("partial"));
            },
          }),
        ),
    );
    const http = client();
    const response = await http.fetch(`${url}/`);
    await response.body?.cancel();
    expect(http.stats()).toEqual({ open: 0, idle: 0 });
  });

  test("a refused connection rejects fast with the origin in the message", async () => {
    const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = listener.port;
    listener.stop(true);
    const started = performance.now();
    await expect(client().fetch(`http://127.0.0.1:${port}/`)).rejects.toThrow(
      `fetch to http://127.0.0.1:${port} failed`,
    );
    expect(performance.now() - started).toBeLessThan(2000);
  });

  test("a connection that never completes its handshake fails at the connect timeout", async () => {
    // A TCP server that accepts and says nothing: the TLS handshake never finishes.
    const { listener } = rawServer(() => {});
    const started = performance.now();
    await expect(
      client({ connectTimeoutMs: 300 }).fetch(`https://127.0.0.1:${listener.port}/`),
    ).rejects.toThrow("connect timeout after 300 ms");
    expect(performance.now() - started).toBeLessThan(2000);
  });

  test("replays a GET once, on a new connection, when a reused one dies before answering", async () => {
    // The race every keep-alive client meets: the server drops an idle connection just as
    // the next request goes out on it. Here the second request on a connection is dropped.
    const server = rawServer((socket) => {
      if (socket.data.requests === 2) {
        socket.end();
        return;
      }
      socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    });
    const http = client();
    // Two connections in the pool, each with one request behind it.
    await Promise.all([
      http.fetch(`${server.url}/`).then((r) => r.text()),
      http.fetch(`${server.url}/`).then((r) => r.text()),
    ]);
    expect(http.stats()).toEqual({ open: 2, idle: 2 });
    // The next GET dies on its pooled connection; the replay must not take the other pooled
    // one (just as stale here) but open a third.
    expect(await (await http.fetch(`${server.url}/`)).text()).toBe("ok");
    expect(server.connections()).toBe(3);
    expect(http.stats()).toEqual({ open: 2, idle: 2 });
  });

  test("never replays a POST whose bytes went out, even on a reused connection", async () => {
    const server = rawServer((socket) => {
      if (socket.data.requests === 2) {
        socket.end();
        return;
      }
      socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    });
    const http = client();
    const post = { method: "POST", body: '{"prompt":"once"}' };
    expect(await (await http.fetch(`${server.url}/`, post)).text()).toBe("ok");
    // The server read the second POST before it dropped the connection: it may have acted.
    await expect(http.fetch(`${server.url}/`, post)).rejects.toThrow(
      "connection closed before the response ended",
    );
    expect(server.connections()).toBe(1);
  });

  test("does not retry a new connection that dies before answering", async () => {
    const server = rawServer((socket) => socket.end());
    await expect(client().fetch(`${server.url}/`, { method: "POST", body: "x" })).rejects.toThrow(
      "connection closed before the response ended",
    );
    expect(server.connections()).toBe(1);
  });

  test("reads a close-delimited body to the end and a malformed answer as an error", async () => {
    const closeDelimited = rawServer((socket) => {
      socket.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end");
      socket.end();
    });
    const http = client();
    const response = await http.fetch(`${closeDelimited.url}/`);
    expect(await response.text()).toBe("until the end");
    expect(http.stats().idle).toBe(0);

    const garbage = rawServer((socket) => socket.write("SSH-2.0-OpenSSH\r\n\r\n"));
    await expect(http.fetch(`${garbage.url}/`)).rejects.toThrow("malformed status line");
  });

  test("refuses an answer with both Transfer-Encoding and Content-Length, and its connection", async () => {
    const server = rawServer((socket) => {
      socket.write(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\n\r\n2\r\nok\r\n0\r\n\r\n",
      );
    });
    const http = client();
    await expect(http.fetch(`${server.url}/`, { method: "POST", body: "1" })).rejects.toThrow(
      "both Transfer-Encoding and Content-Length",
    );
    expect(http.stats()).toEqual({ open: 0, idle: 0 });
    await expect(http.fetch(`${server.url}/`, { method: "POST", body: "2" })).rejects.toThrow(
      "both Transfer-Encoding and Content-Length",
    );
    expect(server.connections()).toBe(2);
  });

  test("drops a connection that sent bytes after a complete answer", async () => {
    const server = rawServer((socket) => {
      socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n");
    });
    const http = client();
    expect(await (await http.fetch(`${server.url}/`)).text()).toBe("ok");
    expect(http.stats()).toEqual({ open: 0, idle: 0 });
  });

  test("refuses a method that is not a token, and CONNECT", async () => {
    const { url } = serve(() => new Response("reached"));
    const { fetch } = client();
    await expect(
      fetch(`${url}/`, { method: "GET / HTTP/1.1\r\nHost: elsewhere\r\n\r\nGET" }),
    ).rejects.toThrow("invalid method");
    await expect(fetch(`${url}/`, { method: "" })).rejects.toThrow("invalid method");
    await expect(fetch(`${url}/`, { method: "CONNECT" })).rejects.toThrow("invalid method");
    expect(await (await fetch(`${url}/`, { method: "patch" })).text()).toBe("reached");
  });

  test("refuses header names and values that would split the request", async () => {
    const { fetch } = client();
    await expect(
      fetch("http://127.0.0.1:1/", { headers: { "x-evil": "a\r\nhost: elsewhere" } }),
    ).rejects.toThrow("invalid header: x-evil");
    await expect(fetch("http://127.0.0.1:1/", { headers: [["bad name", "x"]] })).rejects.toThrow(
      "invalid header",
    );
  });

  test("leaves Request objects and stream bodies to the fallback", async () => {
    const seen: string[] = [];
    const fallback = async (input: string | URL | Request) => {
      seen.push(input instanceof Request ? "request" : String(input));
      return new Response("fallback");
    };
    const { fetch } = client({ fallback });
    await fetch(new Request("http://127.0.0.1:1/"));
    await fetch("http://127.0.0.1:1/", { method: "POST", body: new ReadableStream() });
    expect(seen).toEqual(["request", "http://127.0.0.1:1/"]);
  });

  test("leaves what the environment proxies to the fallback, minus NO_PROXY", async () => {
    const proxiedServer = serve(() => new Response("direct"));
    const excludedServer = serve(() => new Response("direct"));
    const excludedPort = Number(new URL(excludedServer.url).port);
    const fallback = async () => new Response("via fallback");
    const env = {
      HTTP_PROXY: "http://proxy.internal:3128",
      NO_PROXY: `.example.org, [::1], 127.0.0.1:${excludedPort}`,
    };
    const http = client({ fallback, env });
    // Not excluded: the proxy (here the fallback) gets it.
    expect(await (await http.fetch(`${proxiedServer.url}/`)).text()).toBe("via fallback");
    // Excluded by host and port: straight to the server.
    expect(await (await http.fetch(`${excludedServer.url}/`)).text()).toBe("direct");
    // NO_PROXY=* turns the proxy off; no proxy variables, no proxy.
    const none = client({ fallback, env: { ...env, NO_PROXY: "*" } });
    expect(await (await none.fetch(`${proxiedServer.url}/`)).text()).toBe("direct");
    const unset = client({ fallback, env: {} });
    expect(await (await unset.fetch(`${proxiedServer.url}/`)).text()).toBe("direct");
  });

  test("verifies TLS: an unknown certificate is refused, a trusted one works", async () => {
    const tlsServer = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: Bun.file(certPath), key: Bun.file(keyPath) },
      fetch: () => new Response("over tls"),
    });
    servers.push(tlsServer);
    const url = `https://127.0.0.1:${tlsServer.port}/`;
    // This process does not trust the test certificate...
    const script = `
      import { createHttp1Fetch } from "${repoRoot}/runtime/http1-fetch.ts";
      const { fetch, close } = createHttp1Fetch();
      try { console.log(await (await fetch(${JSON.stringify(url)})).text()); }
      catch (error) { console.log("refused: " + error.message); }
      close();
    `;
    const run = async (extraCa: string | undefined) => {
      const env: Record<string, string> = { ...(process.env as Record<string, string>) };
      delete env.NODE_EXTRA_CA_CERTS;
      if (extraCa) env.NODE_EXTRA_CA_CERTS = extraCa;
      const child = Bun.spawn([bunBin, "-e", script], { env, stdout: "pipe", stderr: "pipe" });
      await child.exited;
      return (await new Response(child.stdout).text()).trim();
    };
    // ...a child that does not trust it is refused; one given it as an extra CA gets through.
    expect(await run(undefined)).toContain("refused: ");
    expect(await run(certPath)).toBe("over tls");
  });
});
