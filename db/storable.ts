/**
 * The characters Postgres cannot store: NUL (U+0000), which neither text nor jsonb holds,
 * and UTF-16 surrogates without their pair (JSON's `\ud800` alone), which jsonb refuses (a
 * text column would silently get U+FFFD in their place). Used where text from outside meets
 * the database: the manager's JSON bodies (routes/define.ts) and usage dead letters.
 */

/** Why Postgres cannot store `text`, if it cannot. */
export function unstorableIn(text: string): string | undefined {
  if (text.includes("\u0000")) return "must not contain NUL characters (U+0000)";
  if (!text.isWellFormed()) {
    return "must not contain a UTF-16 surrogate without its pair (such as \\ud800 alone)";
  }
  return undefined;
}

/** `text` with NUL characters and lone surrogates replaced by U+FFFD. */
export function storableText(text: string): string {
  return text.toWellFormed().replaceAll("\u0000", "\ufffd");
}

/** `value` with every string and key made storable (`storableText`). */
export function storable(value: unknown): unknown {
  if (typeof value === "string") return storableText(value);
  if (Array.isArray(value)) return value.map(storable);
  if (typeof value !== "object" || value === null) return value;
  return Object.fromEntries(
    Object.entries(value).map(([key, item]) => [storableText(key), storable(item)]),
  );
}
