import { describe, expect, test } from "bun:test";
import { checkHead } from "../../router/answer-check.ts";
import {
  authorizeFor,
  downstreamResponse,
  droppedFields,
  upstreamHeaders,
} from "../../router/headers.ts";

/** Everything a hostile or careless client might send along with a chat request. */
const clientHeaders = () =>
  new Headers({
    "content-type": "application/json; charset=utf-8",
    accept: "text/event-stream",
    "user-agent": "OpenAI/Python 1.99.0",
    "x-session-id": "conversation-7",
    traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    tracestate: "vendor=1",
    "openai-organization": "org-1",
    "openai-project": "proj-1",
    // Credentials meant for the gateway, never for a worker.
    authorization: "Bearer sk-fleet-client-key",
    cookie: "session=secret",
    "api-key": "azure-style-key",
    "x-api-key": "anthropic-style-key",
    "proxy-authorization": "Basic cHJveHk6c2VjcmV0",
    // Hop-by-hop, and one header the client's Connection marks as hop-by-hop.
    connection: "keep-alive, x-hop",
    "keep-alive": "timeout=5",
    te: "trailers",
    upgrade: "websocket",
    "x-hop": "per-connection",
    // Spoofed forwarding and identity headers.
    "x-forwarded-for": "6.6.6.6",
    "x-forwarded-proto": "gopher",
    "x-forwarded-host": "evil.example",
    "x-request-id": "client-chosen",
    "accept-encoding": "gzip, br",
    "x-custom": "anything",
  });

describe("upstreamHeaders: what the router sends an agent", () => {
  test("an allowlist: client credentials, hop-by-hop and unknown headers never reach a worker", () => {
    const headers = upstreamHeaders({
      incoming: clientHeaders(),
      requestId: "req-1",
      clientAddress: "203.0.113.9",
      proto: "https",
      host: "gateway.example:8443",
    });
    expect(headers).toEqual({
      "content-type": "application/json; charset=utf-8",
      accept: "text/event-stream",
      "user-agent": "OpenAI/Python 1.99.0",
      "x-session-id": "conversation-7",
      traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      tracestate: "vendor=1",
      "openai-organization": "org-1",
      "openai-project": "proj-1",
      // No credential yet: each attempt sets its replica's own (authorizeFor).
      // Set by the router from what it knows, never copied from the client.
      "x-forwarded-for": "203.0.113.9",
      "x-forwarded-proto": "https",
      "x-forwarded-host": "gateway.example:8443",
      "x-request-id": "req-1",
      // Bytes pass through untouched, so ask the agent not to compress them.
      "accept-encoding": "identity",
    });
  });

  test("without a known client address, nothing stands in for it", () => {
    const headers = upstreamHeaders({
      incoming: clientHeaders(),
      requestId: "req-2",
      clientAddress: undefined,
      proto: "http",
      host: null,
    });
    expect(headers.authorization).toBeUndefined();
    expect(headers["x-forwarded-for"]).toBeUndefined();
    expect(headers["x-forwarded-host"]).toBeUndefined();
    expect(headers["x-forwarded-proto"]).toBe("http");
  });

  test("a request without a content type is sent as JSON", () => {
    const headers = upstreamHeaders({
      incoming: new Headers(),
      requestId: "req-3",
      clientAddress: undefined,
      proto: "http",
      host: "127.0.0.1:18000",
    });
    expect(headers["content-type"]).toBe("application/json");
  });
});

describe("authorizeFor: each attempt carries its own worker's agent credential", () => {
  test("the route's agent credential replaces the previous attempt's; none in open mode", () => {
    const headers = upstreamHeaders({
      incoming: clientHeaders(),
      requestId: "req-4",
      clientAddress: undefined,
      proto: "http",
      host: null,
    });
    authorizeFor(headers, { agent_token: "fa_first-worker" });
    expect(headers.authorization).toBe("Bearer fa_first-worker");
    authorizeFor(headers, { agent_token: "fa_second-worker" });
    expect(headers.authorization).toBe("Bearer fa_second-worker");
    authorizeFor(headers, { agent_token: null });
    expect(headers.authorization).toBeUndefined();
  });
});

describe("downstreamResponse: what the client gets back from an agent", () => {
  const downstreamHeaders = (
    upstream: Headers,
    bodyRewritten: boolean,
    set: Record<string, string> = {},
  ) => downstreamResponse(null, 200, upstream, { bodyRewritten, set }).headers;

  const agentHeaders = () =>
    new Headers({
      "content-type": "application/json",
      "content-length": "42",
      "x-request-id": "req-1",
      "retry-after": "3",
      "x-vllm-custom": "kept",
      connection: "keep-alive, x-agent-hop",
      "keep-alive": "timeout=5",
      "x-agent-hop": "per-connection",
      "proxy-authenticate": "Basic",
      trailer: "x-checksum",
      "set-cookie": "agent=1",
      "x-fleet-load": "r=3;w=0;kv=0.42",
    });

  test("drops hop-by-hop headers, those Connection names, cookies and the engine's load; keeps the rest", () => {
    const headers = downstreamHeaders(agentHeaders(), false);
    expect(Object.fromEntries(headers)).toEqual({
      "content-type": "application/json",
      "content-length": "42",
      "x-request-id": "req-1",
      "retry-after": "3",
      "x-vllm-custom": "kept",
    });
  });

  test("drops Content-Length when the router rewrites the body (a hidden usage event)", () => {
    expect(downstreamHeaders(agentHeaders(), true).has("content-length")).toBe(false);
  });

  test("adds the router's own headers over the agent's, and leaves the agent's untouched", () => {
    const upstream = agentHeaders();
    const response = downstreamResponse("{}", 201, upstream, {
      bodyRewritten: false,
      set: { "x-request-id": "req-router", "cache-control": "no-cache" },
    });
    expect(response.status).toBe(201);
    expect(response.headers.get("x-request-id")).toBe("req-router");
    expect(response.headers.get("cache-control")).toBe("no-cache");
    expect(response.headers.has("x-fleet-load")).toBe(false);
    // Trimmed on the response's own copy: the agent's headers are as they came.
    expect(upstream.get("x-request-id")).toBe("req-1");
    expect(upstream.get("x-fleet-load")).toBe("r=3;w=0;kv=0.42");
    expect(upstream.get("set-cookie")).toBe("agent=1");
  });

  test("the answer check's one pass finds the same fields to drop, and the response drops them alike", () => {
    const agent = new Response("{}", { status: 200, headers: agentHeaders() });
    const head = checkHead(agent);
    expect(head.problem).toBeUndefined();
    expect([...(head.dropped ?? [])].sort()).toEqual([
      "connection",
      "keep-alive",
      "proxy-authenticate",
      "set-cookie",
      "trailer",
      "x-fleet-load",
    ]);
    expect(head.dropped).toEqual(droppedFields(agent.headers));
    const viaCheck = downstreamResponse(null, 200, agent.headers, {
      bodyRewritten: false,
      set: {},
      dropped: head.dropped,
    });
    expect(Object.fromEntries(viaCheck.headers)).toEqual(
      Object.fromEntries(downstreamHeaders(agentHeaders(), false)),
    );
    // A head with nothing to drop hands back the shared empty list.
    const plain = checkHead(
      new Response("{}", { headers: { "content-type": "application/json" } }),
    );
    expect(plain.dropped).toEqual([]);
  });

  test("drops Content-Encoding and the encoded length: fetch hands over decoded bytes", () => {
    const encoded = agentHeaders();
    encoded.set("content-encoding", "gzip");
    const headers = downstreamHeaders(encoded, false);
    expect(headers.has("content-encoding")).toBe(false);
    expect(headers.has("content-length")).toBe(false);
    expect(headers.get("content-type")).toBe("application/json");
  });
});
