/**
 * IP address literals as WHATWG URL parsing leaves them (`new URL(u).hostname`): IPv4 is
 * already dotted-decimal there (decimal, hex, octal and short forms are normalised by the
 * parser), IPv6 is bracketed and compressed. Used to refuse what a worker must never
 * advertise and to match allowlists; web-standard only (the router runs on workerd).
 */

export type IpAddress = { version: 4; value: number } | { version: 6; value: bigint };

/** `10.1.2.3` → its 32-bit value; undefined unless four decimal octets. */
export function parseIpv4(text: string): number | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  let value = 0;
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part)) return undefined;
    const octet = Number(part);
    if (octet > 255) return undefined;
    value = value * 256 + octet;
  }
  return value;
}

/** `[::ffff:a9fe:a9fe]` or `fe80::1` → its 128-bit value; undefined if not IPv6. */
export function parseIpv6(text: string): bigint | undefined {
  let bare = text.replace(/^\[|\]$/g, "").toLowerCase();
  const zone = bare.indexOf("%");
  if (zone >= 0) bare = bare.slice(0, zone);
  if (!bare.includes(":")) return undefined;
  // A trailing dotted IPv4 (`::ffff:1.2.3.4`) stands for the last two hextets.
  const lastColon = bare.lastIndexOf(":");
  const tail = bare.slice(lastColon + 1);
  if (tail.includes(".")) {
    const v4 = parseIpv4(tail);
    if (v4 === undefined) return undefined;
    bare = `${bare.slice(0, lastColon + 1)}${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`;
  }
  const halves = bare.split("::");
  if (halves.length > 2) return undefined;
  const head = halves[0] ? halves[0].split(":") : [];
  const rest = halves.length === 2 && halves[1] ? halves[1].split(":") : [];
  const missing = 8 - head.length - rest.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill("0"), ...rest];
  let value = 0n;
  for (const group of groups) {
    if (!/^[0-9a-f]{1,4}$/.test(group)) return undefined;
    value = (value << 16n) | BigInt(Number.parseInt(group, 16));
  }
  return value;
}

export function parseIp(text: string): IpAddress | undefined {
  const v4 = parseIpv4(text);
  if (v4 !== undefined) return { version: 4, value: v4 };
  const v6 = parseIpv6(text);
  return v6 === undefined ? undefined : { version: 6, value: v6 };
}

/**
 * The IPv4 address an IPv6 address carries: IPv4-mapped (`::ffff:a.b.c.d`), the deprecated
 * IPv4-compatible form (`::a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) all reach that IPv4 host.
 */
export function embeddedIpv4(value: bigint): number | undefined {
  const high = value >> 32n;
  if (high === 0xffffn || high === 0n || high === 0x64ff9b0000000000000000n) {
    const v4 = Number(value & 0xffffffffn);
    // `::` and `::1` are not IPv4 hosts.
    if (high === 0n && v4 <= 1) return undefined;
    return v4;
  }
  return undefined;
}

/** A CIDR range (`10.0.0.0/8`, `fd00::/8`) or a single address. */
export type IpRange = { version: 4 | 6; base: bigint; bits: number };

export function parseCidr(text: string): IpRange | undefined {
  const [address = "", prefix] = text.trim().split("/");
  const ip = parseIp(address);
  if (!ip) return undefined;
  const width = ip.version === 4 ? 32 : 128;
  const bits = prefix === undefined ? width : Number(prefix);
  if (
    !Number.isInteger(bits) ||
    bits < 0 ||
    bits > width ||
    (prefix !== undefined && !/^\d+$/.test(prefix))
  )
    return undefined;
  return { version: ip.version, base: BigInt(ip.value), bits };
}

export function inRange(ip: IpAddress, range: IpRange): boolean {
  const width = ip.version === 4 ? 32 : 128;
  let value = BigInt(ip.value);
  let version: 4 | 6 = ip.version;
  // An IPv6 spelling of an IPv4 address matches IPv4 ranges.
  if (ip.version === 6 && range.version === 4) {
    const v4 = embeddedIpv4(ip.value);
    if (v4 === undefined) return false;
    value = BigInt(v4);
    version = 4;
  }
  if (version !== range.version) return false;
  const shift = BigInt((version === 4 ? 32 : width) - range.bits);
  return value >> shift === range.base >> shift;
}

const forbidden = [
  "169.254.0.0/16", // IPv4 link-local: cloud metadata (169.254.169.254) and friends
  "100.100.100.200/32", // Alibaba Cloud metadata
  "0.0.0.0/8", // "this host"
  "fe80::/10", // IPv6 link-local
  "fd00:ec2::254/128", // AWS metadata over IPv6
  "::/128",
].map((text) => parseCidr(text) as IpRange);

/**
 * Why a host must not be dialled on a worker's behalf (link-local, cloud metadata,
 * unspecified), in any spelling the URL parser accepts; undefined when it may be.
 */
export function forbiddenHostReason(hostname: string): string | undefined {
  const name = hostname.toLowerCase().replace(/\.$/, "");
  if (
    /^(metadata|metadata\.google\.internal|instance-data|instance-data\.ec2\.internal)$/.test(name)
  )
    return "a cloud metadata host name";
  const ip = parseIp(name);
  if (!ip) return undefined;
  for (const range of forbidden) {
    if (inRange(ip, range)) return "a link-local, metadata or unspecified address";
  }
  return undefined;
}
