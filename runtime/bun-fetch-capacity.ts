import { dlopen, FFIType, ptr } from "bun:ffi";

/**
 * Makes sure Bun's `fetch` may keep `capacity` requests in flight. Bun reads
 * `BUN_CONFIG_MAX_HTTP_REQUESTS` only at startup (default 256), and every proxied request
 * or stream is one fetch, so the agent, the router and the manager (which mounts the
 * router) would otherwise stall request 257 inside fetch while its timeouts run. When the
 * variable is unset, the process replaces itself with the same argv and the variable set.
 * Call it first thing in a Bun entry; it returns only when nothing needed doing (null) or
 * when re-executing failed (the reason, for a warning).
 */
export function ensureFetchCapacity(
  env: Record<string, string | undefined>,
  capacity: number,
): string | null {
  if (env.BUN_CONFIG_MAX_HTTP_REQUESTS) return null;
  return reexecWith(env, { BUN_CONFIG_MAX_HTTP_REQUESTS: String(capacity) });
}

/**
 * Replaces this process with the same Bun and argv plus `extra` variables (execve: same
 * pid, same stdio, so systemd and supervisors see nothing). Only returns if execve failed;
 * the reason is returned for a warning.
 *
 * Why: Bun reads some settings only at startup, notably `BUN_CONFIG_MAX_HTTP_REQUESTS`,
 * which caps the requests `fetch` has in flight at 256 by default. The proxy makes one
 * fetch per client request, so without this an agent could never keep more than 256
 * sequences running across its engines (vLLM runs up to 1,024 per engine on big GPUs),
 * and the excess would wait invisibly inside the agent instead of in vLLM's queue.
 */
function reexecWith(
  env: Record<string, string | undefined>,
  extra: Record<string, string>,
): string {
  if (process.platform !== "linux" && process.platform !== "darwin") return "unsupported platform";
  try {
    const libc = dlopen(process.platform === "linux" ? "libc.so.6" : "libc.dylib", {
      execve: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    });
    const keep: Buffer[] = [];
    const cString = (value: string) => {
      const buffer = Buffer.from(`${value}\0`);
      keep.push(buffer);
      return buffer;
    };
    const cArray = (items: string[]) => {
      const array = new BigUint64Array(items.length + 1);
      items.forEach((item, i) => {
        array[i] = BigInt(ptr(cString(item)));
      });
      return array;
    };
    const merged = { ...env, ...extra };
    const envp = Object.entries(merged)
      .filter((entry): entry is [string, string] => entry[1] !== undefined)
      .map(([key, value]) => `${key}=${value}`);
    const path = cString(process.execPath);
    const argv = cArray([process.execPath, ...process.execArgv, ...process.argv.slice(1)]);
    libc.symbols.execve(ptr(path), ptr(argv), ptr(cArray(envp)));
    return "execve failed";
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}
