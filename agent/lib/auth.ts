import { createHash, timingSafeEqual } from "node:crypto";

/**
 * Checks `Authorization: Bearer <token>` in constant time: both sides are hashed to 32
 * bytes first, so neither the token's content nor its length leaks through timing.
 */
export function bearerChecker(
  token: string,
): (authorization: string | null | undefined) => boolean {
  const expected = digest(token);
  return (authorization) => {
    if (!authorization || authorization.length < 7) return false;
    if (authorization.slice(0, 7).toLowerCase() !== "bearer ") return false;
    return timingSafeEqual(digest(authorization.slice(7).trim()), expected);
  };
}

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}
