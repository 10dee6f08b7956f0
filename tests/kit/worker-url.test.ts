import { describe, expect, test } from "bun:test";
import {
  embeddedIpv4,
  forbiddenHostReason,
  inRange,
  parseCidr,
  parseIp,
  parseIpv6,
} from "../../kit/ip.ts";
import { workerUrlSchema } from "../../protocol/index.ts";

const accepts = (url: string) => workerUrlSchema.safeParse(url);

describe("worker URL rules", () => {
  test.each([
    [
      "https://u557149-9507-6992150f.bjb2.seetacloud.com:8443",
      "https://u557149-9507-6992150f.bjb2.seetacloud.com:8443",
    ],
    ["HTTP://Host.EXAMPLE:80/", "http://host.example"],
    ["http://127.0.0.1:6006/", "http://127.0.0.1:6006"],
    ["https://gpu.example.com/user/42/", "https://gpu.example.com/user/42"],
    ["http://[::1]:6006", "http://[::1]:6006"],
    ["http://10.0.0.7:6006", "http://10.0.0.7:6006"],
  ])("%s is stored as %s", (raw, normalised) => {
    const parsed = accepts(raw);
    expect(parsed.success).toBe(true);
    expect(parsed.data).toBe(normalised);
  });

  test.each([
    ["http://169.254.169.254", "metadata"],
    ["http://2852039166/", "metadata"],
    ["http://0xa9fea9fe:80", "metadata"],
    ["http://0251.0376.0251.0376", "metadata"],
    ["http://169.254.43518", "metadata"],
    ["http://[::ffff:169.254.169.254]", "metadata"],
    ["http://[::ffff:a9fe:a9fe]:6006", "metadata"],
    ["http://[0:0:0:0:0:ffff:a9fe:a9fe]", "metadata"],
    ["http://[64:ff9b::a9fe:a9fe]", "metadata"],
    ["http://[fe80::1]:6006", "metadata"],
    ["http://[fd00:ec2::254]", "metadata"],
    ["http://100.100.100.200", "metadata"],
    ["http://metadata.google.internal", "metadata"],
    ["http://0.0.0.0:6006", "metadata"],
    ["http://a.example/?", "query"],
    ["http://a.example/#", "query"],
    ["http://a.example/x?y=1", "query"],
    ["http://user:pw@a.example", "user name"],
    ["ftp://a.example", "http or https"],
    ["file:///etc/passwd", "http or https"],
    ["a.example:6006", "http"],
    ["http://a.example/%2e%2e/v1/workers/register", "plain path"],
    [`http://a.example/${"a".repeat(2050)}`, "2,048"],
  ])("%s is refused (%s)", (raw, why) => {
    const parsed = accepts(raw);
    expect(parsed.success).toBe(false);
    expect(parsed.error?.issues[0]?.message).toContain(why);
  });
});

describe("kit/ip", () => {
  test("parses IPv6 in full, compressed and dotted-tail forms to the same value", () => {
    const full = parseIpv6("0:0:0:0:0:ffff:a9fe:a9fe");
    expect(full).toBe(parseIpv6("::ffff:a9fe:a9fe"));
    expect(full).toBe(parseIpv6("[::ffff:169.254.169.254]"));
    expect(embeddedIpv4(full ?? 0n)).toBe(0xa9fea9fe);
    expect(parseIpv6("1::2::3")).toBeUndefined();
    expect(parseIpv6("1:2:3:4:5:6:7:8:9")).toBeUndefined();
  });

  test("matches CIDR ranges across spellings and refuses bad ones", () => {
    const tenSlash8 = parseCidr("10.0.0.0/8");
    const ula = parseCidr("fd00::/8");
    if (!tenSlash8 || !ula) throw new Error("ranges must parse");
    expect(inRange(parseIp("10.200.1.1") ?? { version: 4, value: 0 }, tenSlash8)).toBe(true);
    expect(inRange(parseIp("11.0.0.1") ?? { version: 4, value: 0 }, tenSlash8)).toBe(false);
    expect(inRange(parseIp("::ffff:10.1.2.3") ?? { version: 4, value: 0 }, tenSlash8)).toBe(true);
    expect(inRange(parseIp("fd12::1") ?? { version: 4, value: 0 }, ula)).toBe(true);
    expect(inRange(parseIp("fe80::1") ?? { version: 4, value: 0 }, ula)).toBe(false);
    expect(parseCidr("10.0.0.0/33")).toBeUndefined();
    expect(parseCidr("10.0.0.0/x")).toBeUndefined();
    expect(parseCidr("host.example")).toBeUndefined();
  });

  test("host names other than the metadata ones are not judged (an allowlist is the tool)", () => {
    expect(forbiddenHostReason("gpu-7.example.com")).toBeUndefined();
    expect(forbiddenHostReason("metadata.google.internal.")).toBeDefined();
    expect(forbiddenHostReason("::1")).toBeUndefined();
  });
});
