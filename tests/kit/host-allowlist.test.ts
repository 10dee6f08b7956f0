import { describe, expect, test } from "bun:test";
import { hostAllowed, parseHostAllowlist } from "../../kit/host-allowlist.ts";

const hostOf = (url: string) => new URL(url).hostname;

describe("host allowlist (WORKER_URL_ALLOW)", () => {
  const list = parseHostAllowlist(
    " GPU1.Example.com , .rent.example,*.tail.example, 10.0.0.0/8,203.0.113.7, fd00::/8,[2001:db8::1],",
  );

  test.each([
    "https://gpu1.example.com:8443",
    "http://GPU1.EXAMPLE.COM.:6006",
    "https://u1-9507.bjb2.rent.example:8443",
    "https://a.b.tail.example",
    "http://10.200.3.4:6006",
    "http://0x0a000001:6006",
    "http://[::ffff:10.1.2.3]:6006",
    "http://203.0.113.7:6006",
    "http://[fd12::7]:6006",
    "http://[2001:db8::1]:6006",
  ])("%s is allowed", (url) => {
    expect(hostAllowed(list, hostOf(url))).toBe(true);
  });

  test.each([
    "https://gpu2.example.com",
    "https://example.com",
    "https://rent.example",
    "https://evilrent.example",
    "https://rent.example.evil.test",
    "http://11.0.0.1:6006",
    "http://203.0.113.8:6006",
    "http://127.0.0.1:6006",
    "http://[2001:db8::2]:6006",
    "http://localhost:6006",
  ])("%s is not allowed", (url) => {
    expect(hostAllowed(list, hostOf(url))).toBe(false);
  });

  test("a suffix does not match its apex; list the apex too", () => {
    const apex = parseHostAllowlist("rent.example,.rent.example");
    expect(hostAllowed(apex, "rent.example")).toBe(true);
    expect(hostAllowed(apex, "a.rent.example")).toBe(true);
  });

  test("an IP entry never matches a name, nor a name an IP", () => {
    const names = parseHostAllowlist("localhost");
    expect(hostAllowed(names, "127.0.0.1")).toBe(false);
    expect(hostAllowed(parseHostAllowlist("127.0.0.1"), "localhost")).toBe(false);
  });

  test.each([
    ["10.0.0.0/33", "10.0.0.0/33"],
    ["http://gpu1.example.com", "http://gpu1.example.com"],
    ["gpu1.example.com:8443", "gpu1.example.com:8443"],
    ["*", "*"],
    ["gpu_1..example", "gpu_1..example"],
    ["fd00::/129", "fd00::/129"],
    ["user@host", "user@host"],
    [" , ", "at least one"],
  ])("refuses %s, naming it", (text, named) => {
    expect(() => parseHostAllowlist(text)).toThrow(named);
  });
});
