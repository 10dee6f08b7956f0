import { describe, expect, test } from "bun:test";
import { Cors, corsOriginsSchema } from "../../kit/cors.ts";

/** CORS_ORIGINS and what it answers a browser (kit/cors.ts). */
describe("CORS_ORIGINS", () => {
  const parse = (value: string | undefined) => corsOriginsSchema.safeParse(value);

  test("unset, empty or `*` lets every origin in, as vLLM does; `none` lets none", () => {
    for (const value of [undefined, "", " * "]) {
      expect(parse(value).data?.origins).toBe("*");
    }
    for (const value of ["none", "NONE", ","]) {
      const parsed = parse(value);
      expect(parsed.success).toBe(true);
      expect(parsed.data).toBeUndefined();
    }
  });

  test("a list of origins, written as browsers send them (case and a trailing slash forgiven)", () => {
    const cors = parse(
      "https://app.example.com, HTTP://LOCALHOST:3000/ ,https://b.example:8443",
    ).data;
    expect(cors?.origins).toEqual(
      new Set(["https://app.example.com", "http://localhost:3000", "https://b.example:8443"]),
    );
    expect(cors?.allow("http://localhost:3000")).toBe("http://localhost:3000");
    expect(cors?.allow("http://localhost:3001")).toBeUndefined();
    expect(cors?.allow("https://app.example.com.evil.test")).toBeUndefined();
  });

  test("anything that is not an origin is refused, quoted", () => {
    for (const value of [
      "https://app.example.com/path",
      "app.example.com",
      "ftp://x.example",
      "*.example.com",
      "https://a.example?x=1",
    ]) {
      const parsed = parse(`https://ok.example,${value}`);
      expect({ value, success: parsed.success }).toEqual({ value, success: false });
      expect(parsed.error?.issues[0]?.message).toContain("is not an origin");
    }
  });
});

describe("Cors", () => {
  const preflight = (cors: Cors, headers: Record<string, string>) =>
    cors.preflight(
      new Request("http://router.test/v1/chat/completions", { method: "OPTIONS", headers }),
    );

  test("a preflight from an allowed origin is granted the method and the headers it asks for, by name", () => {
    const answer = preflight(new Cors("*"), {
      origin: "https://app.example.com",
      "access-control-request-method": "POST",
      "access-control-request-headers": "authorization, content-type, x-session-id",
    });
    expect(answer.status).toBe(204);
    expect(answer.headers.get("access-control-allow-origin")).toBe("*");
    expect(answer.headers.get("access-control-allow-methods")).toBe("GET, POST, OPTIONS");
    expect(answer.headers.get("access-control-allow-headers")).toBe(
      "authorization, content-type, x-session-id",
    );
    expect(answer.headers.get("access-control-max-age")).toBe("600");
    // Asked headers that are not a list of names are not echoed.
    const odd = preflight(new Cors("*"), {
      origin: "https://app.example.com",
      "access-control-request-headers": 'authorization, x-a; x-b="1"',
    });
    expect(odd.headers.get("access-control-allow-headers")).toBe("authorization, content-type");
  });

  test("a preflight from another origin gets no permission, so the browser stops there", () => {
    const cors = new Cors(new Set(["https://app.example.com"]));
    const answer = preflight(cors, { origin: "https://other.example" });
    expect(answer.status).toBe(204);
    expect(answer.headers.has("access-control-allow-origin")).toBe(false);
    expect(answer.headers.has("access-control-allow-methods")).toBe(false);
    expect(answer.headers.get("vary")).toContain("origin");
  });

  test("an answer is made readable to an allowed origin (and says it varies by origin when listed)", () => {
    const listed = new Cors(new Set(["https://app.example.com"]));
    const answer = listed.decorate(
      Response.json({ ok: true }, { headers: { "x-request-id": "r-1" } }),
      "https://app.example.com",
    );
    expect(answer.headers.get("access-control-allow-origin")).toBe("https://app.example.com");
    expect(answer.headers.get("access-control-expose-headers")).toBe("x-request-id, retry-after");
    expect(answer.headers.get("vary")).toBe("origin");
    const refused = listed.decorate(Response.json({ ok: true }), "https://other.example");
    expect(refused.headers.has("access-control-allow-origin")).toBe(false);
    // A response whose headers are immutable (as a fetch hands one over) is copied.
    const fetched = Response.redirect("https://elsewhere.example/", 302);
    const copied = new Cors("*").decorate(fetched, "https://app.example.com");
    expect(copied.headers.get("access-control-allow-origin")).toBe("*");
    expect(copied.status).toBe(302);
  });
});
