/**
 * What Linux's /proc says about a process: enough to tell that a pid is still the process the
 * agent launched (its start time, process group and command line), to find the engines it
 * launched by the marker in their environment, and to tell which process listens on a port.
 * Every reader answers undefined (or nothing) where /proc is missing or unreadable, so the
 * agent runs elsewhere, only without adoption.
 */
import { readdirSync, readFileSync, readlinkSync } from "node:fs";

/** A process as /proc/{pid}/stat shows it. */
export type ProcStat = {
  pid: number;
  /** Process group id: an engine leads its own (pgid = pid). */
  pgid: number;
  /** Single-letter state; `Z` is a zombie (exited, not yet reaped). */
  state: string;
  /** Clock ticks after boot when it started: a pid reused later has another start time. */
  startTime: string;
};

/** Whether this system has a /proc the agent can read (Linux). */
export function procAvailable(): boolean {
  return readStat(process.pid) !== undefined;
}

/** /proc/{pid}/stat, or undefined when the process is gone (or /proc is not there). */
export function readStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may itself hold spaces and parentheses:
  // the fields after it start after the last ")".
  const close = text.lastIndexOf(")");
  if (close === -1) return undefined;
  const fields = text.slice(close + 2).split(" ");
  // fields[0] is field 3 (state), so field N is fields[N - 3].
  const state = fields[0];
  const pgid = Number(fields[2]);
  const startTime = fields[19];
  if (!state || !Number.isInteger(pgid) || !startTime) return undefined;
  return { pid, pgid, state, startTime };
}

/** The kernel's id of this boot: start times count from boot, so they compare within one. */
export function bootId(): string | undefined {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return undefined;
  }
}

/** /proc/{pid}/cmdline as argv, or undefined. */
export function readCmdline(pid: number): string[] | undefined {
  try {
    const parts = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    if (parts.at(-1) === "") parts.pop();
    return parts;
  } catch {
    return undefined;
  }
}

/** One variable of the environment a process was started with, or undefined. */
export function readEnvVar(pid: number, name: string): string | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/environ`, "utf8");
  } catch {
    return undefined;
  }
  const prefix = `${name}=`;
  for (const entry of text.split("\0")) {
    if (entry.startsWith(prefix)) return entry.slice(prefix.length);
  }
  return undefined;
}

/** Every pid in /proc (empty without /proc). */
export function listPids(): number[] {
  let names: string[];
  try {
    names = readdirSync("/proc");
  } catch {
    return [];
  }
  const pids: number[] = [];
  for (const name of names) {
    const pid = Number(name);
    if (Number.isInteger(pid) && pid > 0) pids.push(pid);
  }
  return pids;
}

/**
 * Whether `argv` (minus its first word) appears in `cmdline` in order and without gaps. The
 * first word is the executable the agent ran; after a `#!` line the kernel shows the
 * interpreter and the script instead (`python3 /usr/bin/vllm serve …`, or `bun main.ts serve …`
 * for the simulator), so the arguments that follow are what identifies the engine.
 */
export function cmdlineMatches(argv: readonly string[], cmdline: readonly string[]): boolean {
  const tail = argv.slice(1);
  if (tail.length === 0) return cmdline[0] === argv[0];
  for (let start = 0; start + tail.length <= cmdline.length; start++) {
    if (tail.every((arg, i) => cmdline[start + i] === arg)) return true;
  }
  return false;
}

/**
 * Who listens on TCP `port` on this host: the socket inodes of listening sockets on it,
 * from /proc/net/tcp and tcp6 (any local address), or undefined when they cannot be read.
 */
export function listeningInodes(port: number): Set<string> | undefined {
  const inodes = new Set<string>();
  let readAny = false;
  const hexPort = port.toString(16).toUpperCase().padStart(4, "0");
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    readAny = true;
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      const local = cols[1];
      const state = cols[3];
      const inode = cols[9];
      // 0A is TCP_LISTEN.
      if (state === "0A" && local?.endsWith(`:${hexPort}`) && inode && inode !== "0") {
        inodes.add(inode);
      }
    }
  }
  return readAny ? inodes : undefined;
}

/**
 * Whether a process of group `pgid` holds one of `inodes` (a listening socket): the engine's
 * API server, or any process vLLM forked into its group. Reads only the group's processes.
 */
export function groupHoldsSocket(pgid: number, inodes: ReadonlySet<string>): boolean {
  for (const pid of listPids()) {
    if (readStat(pid)?.pgid !== pgid) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      const match = /^socket:\[(\d+)\]$/.exec(target);
      if (match?.[1] && inodes.has(match[1])) return true;
    }
  }
  return false;
}
