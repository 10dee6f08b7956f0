/** Strips the brackets of an IPv6 literal and normalises case. */
function bareHost(host: string): string {
  return host
    .trim()
    .toLowerCase()
    .replace(/^\[|\]$/g, "");
}

/** True for addresses that only this host can reach (`localhost`, 127.0.0.0/8, `::1`). */
export function isLoopbackHost(host: string): boolean {
  const h = bareHost(host);
  return h === "localhost" || h === "::1" || /^127(\.\d{1,3}){3}$/.test(h);
}

/** True for addresses that mean "every interface". */
export function isWildcardHost(host: string): boolean {
  const h = bareHost(host);
  return h === "0.0.0.0" || h === "::" || h === "";
}
