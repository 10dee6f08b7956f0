/**
 * A list of hosts (`WORKER_URL_ALLOW`): exact host names, `.suffix` domains, IP addresses and
 * CIDR ranges, comma-separated. Host names are compared the way the URL parser leaves them
 * (`new URL(u).hostname`: lower case, punycode), so `GPU1.Example` in the list matches
 * `http://gpu1.example:6006`. Names never match IP addresses and IP entries never match
 * names: nothing is resolved. Web-standard only.
 */
import { type IpRange, inRange, parseCidr, parseIp } from "./ip.ts";

export type HostAllowlist = {
  /** Exact host names (lower case, no trailing dot). */
  names: ReadonlySet<string>;
  /** `.example.com`: every host name under example.com, not example.com itself. */
  suffixes: readonly string[];
  /** IP addresses (as /32 or /128) and CIDR ranges. */
  ranges: readonly IpRange[];
  /** The entries as given, for messages. */
  entries: readonly string[];
};

const label = "[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?";
const hostName = new RegExp(`^${label}(?:\\.${label})*$`);

/**
 * Parses the list; throws an `Error` naming the first entry it cannot read (a URL, a port,
 * `*` alone, a range with a bad prefix…). Empty entries are skipped; an empty list is an
 * error (unset the variable to allow every host).
 */
export function parseHostAllowlist(text: string): HostAllowlist {
  const names = new Set<string>();
  const suffixes: string[] = [];
  const ranges: IpRange[] = [];
  const entries = text
    .split(",")
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "");
  if (entries.length === 0) throw new Error("must list at least one host, suffix or CIDR range");
  for (const entry of entries) {
    const bad = (why: string) =>
      new Error(
        `entry "${entry}" ${why}; entries are host names, .suffix domains, IP addresses or CIDR ranges such as 10.0.0.0/8`,
      );
    // An IPv6 address or range: the URL parser needs brackets, parseCidr does not.
    if (entry.includes(":") || /^[\d./]+$/.test(entry)) {
      const range = parseCidr(entry.replace(/^\[([^\]]+)\]/, "$1"));
      if (!range) throw bad("is not an IP address or CIDR range");
      ranges.push(range);
      continue;
    }
    const suffix = entry.startsWith("*.") ? entry.slice(1) : entry;
    const bare = suffix.startsWith(".") ? suffix.slice(1) : suffix;
    const name = normalizeName(bare);
    if (name === undefined) throw bad("is not a host name");
    // `http://10.1` is an IPv4 address to the URL parser: such an entry must be written as one.
    if (parseIp(name)) {
      if (suffix !== bare) throw bad("is an IP address with a leading dot");
      ranges.push(parseCidr(name) as IpRange);
      continue;
    }
    if (suffix !== bare) suffixes.push(`.${name}`);
    else names.add(name);
  }
  return { names, suffixes, ranges, entries };
}

/** Whether `hostname` (as `new URL(u).hostname` gives it) is on the list. */
export function hostAllowed(list: HostAllowlist, hostname: string): boolean {
  const ip = parseIp(hostname);
  if (ip) return list.ranges.some((range) => inRange(ip, range));
  const name = hostname.toLowerCase().replace(/\.$/, "");
  return list.names.has(name) || list.suffixes.some((suffix) => name.endsWith(suffix));
}

/** The host name as the URL parser would write it (IDN → punycode), or undefined if not one. */
function normalizeName(text: string): string | undefined {
  if (text === "" || /[/:@?#\s*]/.test(text)) return undefined;
  let hostname: string;
  try {
    hostname = new URL(`http://${text}`).hostname;
  } catch {
    return undefined;
  }
  const name = hostname.replace(/\.$/, "");
  if (parseIp(name)) return name;
  return hostName.test(name) ? name : undefined;
}
