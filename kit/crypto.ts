const encoder = new TextEncoder();

/** Lower-case hex SHA-256 of a UTF-8 string (Web Crypto: Bun, Node and workerd). */
export async function sha256Hex(text: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
  let hex = "";
  for (const byte of digest) hex += byte.toString(16).padStart(2, "0");
  return hex;
}
