import type { Context } from "hono";
import { getCookie, setCookie } from "hono/cookie";
import { bearerToken, constantTimeEqual, randomToken } from "../../kit/crypto.ts";
import type { ManagerConfig } from "../env.ts";

/** The session cookie: a random id the manager keeps in memory, never the admin token. */
export const sessionCookie = "fleet_session";
/** The CSRF cookie: a random value every form carries back in its `csrf` field. */
export const csrfCookie = "fleet_csrf";

const sessionTtlMs = 12 * 60 * 60 * 1000;
/** More sessions than any operator team opens; the oldest go first past it. */
const maxSessions = 10_000;

/** How a console request is let in: no token set, the admin token as Bearer, or a session. */
export type ConsoleAccess = "open" | "bearer" | "session";

/**
 * Signed-in browsers. In memory, so a restart signs everyone out and sign-out ends the
 * session at once (a signed stateless cookie would stay valid until it expires).
 */
export class ConsoleSessions {
  private readonly sessions = new Map<string, number>();

  constructor(private readonly now: () => number) {}

  create(): string {
    const id = randomToken("", 32);
    this.sessions.set(id, this.now() + sessionTtlMs);
    while (this.sessions.size > maxSessions) {
      const oldest = this.sessions.keys().next().value;
      if (oldest === undefined) break;
      this.sessions.delete(oldest);
    }
    return id;
  }

  valid(id: string | undefined): boolean {
    if (!id) return false;
    const expires = this.sessions.get(id);
    if (expires === undefined) return false;
    if (expires > this.now()) return true;
    this.sessions.delete(id);
    return false;
  }

  end(id: string | undefined): void {
    if (id) this.sessions.delete(id);
  }
}

/** Who the caller is to the console, or undefined when it must sign in. */
export function consoleAccess(
  c: Context,
  config: Pick<ManagerConfig, "adminToken">,
  sessions: ConsoleSessions,
): ConsoleAccess | undefined {
  if (!config.adminToken) return "open";
  const presented = bearerToken(c.req.header("authorization"));
  if (presented !== "" && constantTimeEqual(presented, config.adminToken)) return "bearer";
  if (sessions.valid(getCookie(c, sessionCookie))) return "session";
  return undefined;
}

/** Cookie attributes: HttpOnly, SameSite=Strict, Secure when the page came over HTTPS. */
export function cookieOptions(c: Context, maxAgeS?: number) {
  // Not parsed: a Host the URL parser refuses (`x:99999`) must not fail the page.
  const secure = c.req.url.startsWith("https:");
  return {
    path: "/",
    httpOnly: true,
    sameSite: "Strict" as const,
    secure,
    ...(maxAgeS === undefined ? {} : { maxAge: maxAgeS }),
  };
}

export function startSession(c: Context, sessions: ConsoleSessions): void {
  setCookie(c, sessionCookie, sessions.create(), cookieOptions(c, sessionTtlMs / 1000));
}

/**
 * The CSRF value this browser's forms carry: the cookie's, set now when missing. A form
 * posted from another site cannot carry it (it cannot read the cookie), and SameSite=Strict
 * keeps the cookie off that post anyway: the double-submit check fails either way.
 */
export function csrfToken(c: Context): string {
  const held = getCookie(c, csrfCookie);
  if (held && /^[A-Za-z0-9_-]{20,}$/.test(held)) return held;
  // One value per response: a page asks once per form.
  const issued = issuedCsrf.get(c);
  if (issued) return issued;
  const fresh = randomToken("", 24);
  issuedCsrf.set(c, fresh);
  setCookie(c, csrfCookie, fresh, cookieOptions(c));
  return fresh;
}

const issuedCsrf = new WeakMap<Context, string>();

/** Whether a form's `csrf` field matches this browser's cookie. */
export function csrfValid(c: Context, field: unknown): boolean {
  const held = getCookie(c, csrfCookie);
  return typeof field === "string" && !!held && field !== "" && constantTimeEqual(field, held);
}
