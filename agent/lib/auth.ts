/**
 * Checks `Authorization: Bearer <token>` in constant time with respect to the token's
 * content: every character of the expected token is compared, whatever the first
 * mismatch. The scheme is matched case-insensitively (RFC 9110 §11.1). No hashing or
 * allocation per request: this runs on the proxy's hot path.
 */
export function bearerChecker(
  token: string,
): (authorization: string | null | undefined) => boolean {
  const expected = token;
  return (authorization) => {
    if (!authorization || authorization.length < 8) return false;
    const scheme = authorization.charCodeAt(6);
    if (scheme !== 32 || authorization.slice(0, 6).toLowerCase() !== "bearer") return false;
    const offset = 7;
    let diff = (authorization.length - offset) ^ expected.length;
    for (let i = 0; i < expected.length; i++) {
      // Past the end, charCodeAt gives NaN, which `^` treats as 0: still a mismatch.
      diff |= authorization.charCodeAt(offset + i) ^ expected.charCodeAt(i);
    }
    return diff === 0;
  };
}
