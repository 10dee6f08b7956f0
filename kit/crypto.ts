const encoder = new TextEncoder();

/** Lower-case hex SHA-256 of a UTF-8 string (Web Crypto: Bun, Node and workerd). */
export async function sha256Hex(text: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
  let hex = "";
  for (const byte of digest) hex += byte.toString(16).padStart(2, "0");
  return hex;
}

/**
 * A new secret: `prefix` plus 32 random bytes in base64url (256 bits). The prefix names the
 * kind (`fw_` worker, `fa_` agent, `fr_` router) so a leaked one is recognisable in logs
 * and secret scanners.
 */
export function randomToken(prefix: string, bytes = 32): string {
  const raw = crypto.getRandomValues(new Uint8Array(bytes));
  let binary = "";
  for (const byte of raw) binary += String.fromCharCode(byte);
  return `${prefix}${btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")}`;
}

/**
 * Compares two secrets in time that depends only on the expected one's length: every
 * character is compared whatever the first mismatch, so response timing tells an attacker
 * nothing about how much of a guess was right.
 */
export function constantTimeEqual(presented: string, expected: string): boolean {
  let diff = presented.length ^ expected.length;
  for (let i = 0; i < expected.length; i++) {
    // Past the end of `presented`, charCodeAt gives NaN, which `^` treats as 0: a mismatch
    // is already recorded by the length check.
    diff |= presented.charCodeAt(i) ^ expected.charCodeAt(i);
  }
  return diff === 0;
}

/** The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), or "". */
export function bearerToken(authorization: string | null | undefined): string {
  if (!authorization || authorization.length < 8) return "";
  if (authorization.charCodeAt(6) !== 32 || authorization.slice(0, 6).toLowerCase() !== "bearer")
    return "";
  return authorization.slice(7).trim();
}

/** `constantTimeEqual` for values that may be absent (a column that is null, a cache miss). */
export function sameSecret(stored: string | null | undefined, presented: string): boolean {
  return stored !== null && stored !== undefined && constantTimeEqual(presented, stored);
}
