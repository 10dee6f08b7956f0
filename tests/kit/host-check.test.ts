import { describe, expect, test } from "bun:test";
import { Hono } from "hono";
import { hostMissing, loopbackHostsOnly, urlHostname } from "../../kit/host-check.ts";

describe("urlHostname", () => {
  test("the host an absolute URL names, without its port; IPv6 literals keep their brackets", () => {
    const cases: [string, string | undefined][] = [
      ["http://127.0.0.1:18000/v1/models", "127.0.0.1"],
      ["http://localhost/health", "localhost"],
      ["https://fleet.example.com", "fleet.example.com"],
      ["http://[::1]:6006/proxy/a/v1/x", "[::1]"],
      ["http://[::1]/", "[::1]"],
      ["http://evil.example:18000/?q=http://127.0.0.1/", "evil.example"],
      ["http://[::1/", undefined],
      ["/health", undefined],
      ["", undefined],
    ];
    for (const [url, host] of cases) expect({ url, host: urlHostname(url) }).toEqual({ url, host });
  });
});

describe("hostMissing", () => {
  test("a bare path (what Bun leaves without a usable Host header) is 400 in OpenAI's shape", async () => {
    // Request objects need absolute URLs: the bare path is what Bun's server hands over.
    const bare = { url: "/v1/models" } as Request;
    const refused = hostMissing(bare);
    expect(refused?.status).toBe(400);
    expect(await refused?.json()).toMatchObject({
      error: { code: "invalid_request", type: "invalid_request_error" },
    });
    expect(hostMissing(new Request("http://127.0.0.1:1/v1/models"))).toBeUndefined();
  });
});

describe("loopbackHostsOnly", () => {
  const app = new Hono();
  app.use("*", loopbackHostsOnly("manager", "Set ADMIN_TOKEN."));
  app.get("*", (c) => c.text("served"));

  test("requests addressed to loopback names are served, any other name is 403 saying why", async () => {
    for (const url of [
      "http://127.0.0.1:18000/v1/models",
      "http://127.1.2.3/",
      "http://localhost:18000/",
      "http://[::1]:18000/",
    ]) {
      const response = await app.request(url);
      expect({ url, status: response.status }).toEqual({ url, status: 200 });
    }
    for (const url of [
      "http://evil.example:18000/v1/models",
      "http://10.0.0.5:18000/",
      "http://localhost.evil.example/",
    ]) {
      const response = await app.request(url);
      expect({ url, status: response.status }).toEqual({ url, status: 403 });
      const body = (await response.json()) as { error: { message: string; code: string } };
      expect(body.error.code).toBe("forbidden");
      expect(body.error.message).toContain("DNS rebinding");
      expect(body.error.message).toContain("Set ADMIN_TOKEN.");
    }
  });
});
