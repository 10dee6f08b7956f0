/**
 * `GET /install.sh`: the POSIX shell script a GPU host pipes into `sh` to install or upgrade
 * its agent from this manager (docs/operations.md, "Adding a GPU host").
 */

/** A value as one single-quoted shell word. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/**
 * Variables the script writes into the agent's env file when they are set where it runs:
 * the agent's own (agent/env.ts), the engines' (vLLM, Hugging Face, CUDA) and the simulator
 * kit's. Anything else stays out of the file.
 */
const forwarded = [
  "FLEET_TOKEN",
  "MANAGER_URL",
  "PUBLIC_URL",
  "WORKER_*",
  "AGENT_*",
  "ENGINE_*",
  "MANAGER_RETRY_MAX_S",
  "NVIDIA_SMI_BIN",
  "LOG_LEVEL",
  "DRAIN_*",
  "SHUTDOWN_TIMEOUT_S",
  "BUN_CONFIG_MAX_HTTP_REQUESTS",
  "VLLM_*",
  "HF_*",
  "HUGGING_FACE_*",
  "CUDA_*",
  "SIM_*",
];

export function installScript(options: { base: string; sha256: string; version: string }): string {
  return `#!/bin/sh
# vllm-fleet: installs (or upgrades) the agent of a GPU host from the manager at ${options.base}
#
#   curl -fsSL ${options.base}/install.sh | FLEET_TOKEN=... WORKER_ID=... PUBLIC_URL=... sh
#
# Downloads the agent executable (fleet ${options.version}), checks its SHA-256, writes the agent's
# variables (FLEET_TOKEN, WORKER_ID, PUBLIC_URL, WORKER_URL, VLLM_BIN, ...: see fleet-agent
# --help) to an env file only its user can read, and starts it: as the systemd service
# fleet-agent where systemd runs and this is root, else in the background with a pid file and
# a log file. Run it again to upgrade in place: the settings given then replace those of the
# same name, the others are kept; the running engines are handed over to the new agent.
#
#   FLEET_INSTALL_DIR  where it goes (default /opt/fleet-agent as root, else ~/.fleet-agent)
#   FLEET_SERVICE      auto (default), systemd or background
set -eu

BASE=${shellQuote(options.base)}
SHA256=${shellQuote(options.sha256)}
VERSION=${shellQuote(options.version)}

say() { printf '%s\\n' "fleet-agent install: $*" >&2; }
die() { say "$*"; exit 1; }

if [ "$(id -u)" = 0 ]; then default_dir=/opt/fleet-agent; else default_dir="\${HOME:-/tmp}/.fleet-agent"; fi
DIR="\${FLEET_INSTALL_DIR:-$default_dir}"
MODE="\${FLEET_SERVICE:-auto}"
UNIT=fleet-agent
case "$MODE" in
  auto)
    if [ "$(id -u)" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      MODE=systemd
    else
      MODE=background
    fi ;;
  systemd | background) ;;
  *) die "FLEET_SERVICE must be auto, systemd or background (got $MODE)" ;;
esac

mkdir -p "$DIR/bin" || die "cannot create $DIR (set FLEET_INSTALL_DIR)"
DIR=$(cd "$DIR" && pwd)
BIN="$DIR/bin/fleet-agent"
ENV_FILE="$DIR/agent.env"
PID_FILE="$DIR/agent.pid"
LOG_FILE="$DIR/agent.log"
tmp="$DIR/bin/.fleet-agent.$$"
trap 'rm -f "$tmp" "$tmp.gz" "$tmp.env"' EXIT
trap 'exit 1' INT TERM

# 1. download and verify
say "downloading the agent (fleet $VERSION) from $BASE/downloads/fleet-agent"
if command -v curl >/dev/null 2>&1; then
  curl -fsSL -o "$tmp.gz" "$BASE/downloads/fleet-agent" || die "the download failed"
elif command -v wget >/dev/null 2>&1; then
  wget -q -O "$tmp.gz" "$BASE/downloads/fleet-agent" || die "the download failed"
else
  die "neither curl nor wget is installed"
fi
if command -v sha256sum >/dev/null 2>&1; then
  got=$(sha256sum "$tmp.gz" | cut -d ' ' -f 1)
elif command -v shasum >/dev/null 2>&1; then
  got=$(shasum -a 256 "$tmp.gz" | cut -d ' ' -f 1)
elif command -v openssl >/dev/null 2>&1; then
  got=$(openssl dgst -sha256 "$tmp.gz" | sed 's/.*= *//')
else
  die "no sha256sum, shasum or openssl to check the download with"
fi
[ "$got" = "$SHA256" ] ||
  die "checksum mismatch: expected $SHA256, got $got: the download is damaged or was changed on the way; nothing was installed"
gzip -dc "$tmp.gz" > "$tmp" || die "cannot unpack the download"
chmod 755 "$tmp"
"$tmp" --version >/dev/null 2>&1 || die "the downloaded agent does not run on this host ($(uname -sm))"

# 2. settings: the agent's variables set here replace those of the same name in the env file
umask 077
names=$(env | sed -n 's/^\\([A-Za-z_][A-Za-z0-9_]*\\)=.*/\\1/p' | sort -u)
given=""
: > "$tmp.env"
for name in $names; do
  case "$name" in
    ${forwarded.join(" | ")}) ;;
    *) continue ;;
  esac
  eval "value=\\\${$name}"
  quoted=$(printf '%s' "$value" | sed "s/'/'\\\\\\\\''/g")
  printf "%s='%s'\\n" "$name" "$quoted" >> "$tmp.env"
  given="$given $name"
done
if [ -f "$ENV_FILE" ]; then
  while IFS= read -r line; do
    name=\${line%%=*}
    case " $given " in *" $name "*) continue ;; esac
    printf '%s\\n' "$line" >> "$tmp.env"
  done < "$ENV_FILE"
fi
grep -q '^MANAGER_URL=' "$tmp.env" || printf "MANAGER_URL='%s'\\n" "$BASE" >> "$tmp.env"
# Bun's in-flight fetch cap, read once at startup: the proxy makes one fetch per request.
grep -q '^BUN_CONFIG_MAX_HTTP_REQUESTS=' "$tmp.env" || printf "BUN_CONFIG_MAX_HTTP_REQUESTS='4096'\\n" >> "$tmp.env"
chmod 600 "$tmp.env"
mv -f "$tmp.env" "$ENV_FILE"

# 3. the running agent, if any: an agent that can hand its engines over (AGENT_KEEP_ENGINES)
# stops with SIGUSR2, leaving them for the new one to adopt; an older one stops them.
signal=TERM
if [ -x "$BIN" ] && "$BIN" --help 2>/dev/null | grep -q AGENT_KEEP_ENGINES; then signal=USR2; fi
mv -f "$tmp" "$BIN"

running_pid() {
  [ -f "$PID_FILE" ] || return 1
  pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # A pid file outliving its process may name another program now.
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\\000' ' ' < "/proc/$pid/cmdline" | grep -q fleet-agent || return 1
  fi
  printf '%s\\n' "$pid"
}

handed_over=""
if [ "$MODE" = systemd ]; then
  if systemctl is-active --quiet "$UNIT"; then
    say "stopping the running agent (SIG$signal)"
    if [ "$signal" = USR2 ]; then
      systemctl kill --kill-whom=main -s SIGUSR2 "$UNIT"
      i=0
      while systemctl is-active --quiet "$UNIT" && [ $i -lt 120 ]; do sleep 1; i=$((i + 1)); done
      handed_over=yes
    else
      systemctl stop "$UNIT"
      handed_over=no
    fi
  fi
else
  if pid=$(running_pid); then
    say "stopping the running agent (pid $pid, SIG$signal)"
    kill -s "$signal" "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null; do
      i=$((i + 1))
      if [ $i -gt 120 ]; then say "it did not stop within 120 s: killing it"; kill -s KILL "$pid" 2>/dev/null || true; break; fi
      sleep 1
    done
    if [ "$signal" = USR2 ]; then handed_over=yes; else handed_over=no; fi
  fi
fi

# 4. start it
if [ "$MODE" = systemd ]; then
  cat > "/etc/systemd/system/$UNIT.service" <<UNIT
[Unit]
Description=vllm-fleet agent
After=network-online.target
Wants=network-online.target

[Service]
WorkingDirectory=$DIR
EnvironmentFile=$ENV_FILE
ExecStart=$BIN
Restart=on-failure
RestartSec=5
# The agent stops its engines itself (each leads its own process group). Killing the whole
# group would also take engines that an upgrade leaves for the next agent to adopt.
KillMode=process
TimeoutStopSec=120

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable "$UNIT" >/dev/null 2>&1 || true
  systemctl restart "$UNIT"
  started() { systemctl is-active --quiet "$UNIT"; }
  logs() { journalctl -u "$UNIT" -n 20 --no-pager; }
  follow="journalctl -u $UNIT -f"
  stop="systemctl stop $UNIT"
else
  from=$( [ -f "$LOG_FILE" ] && wc -l < "$LOG_FILE" || echo 0 )
  touch "$LOG_FILE"
  chmod 600 "$LOG_FILE"
  detach=""
  command -v setsid >/dev/null 2>&1 && detach=setsid
  (
    cd "$DIR"
    set -a
    . "$ENV_FILE"
    set +a
    exec nohup $detach "$BIN"
  ) >> "$LOG_FILE" 2>&1 < /dev/null &
  printf '%s\\n' "$!" > "$PID_FILE"
  started() { kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }
  logs() { tail -n "+$((from + 1))" "$LOG_FILE" | tail -n 20; }
  follow="tail -f $LOG_FILE"
  stop="kill \\$(cat $PID_FILE)"
fi

# 5. wait until it listens (it registers in the background), or show why it did not start
i=0
while :; do
  if ! started; then say "the agent exited:"; logs >&2; exit 1; fi
  if [ "$MODE" = systemd ]; then
    journalctl -u "$UNIT" -n 50 --no-pager 2>/dev/null | grep -q '"agent listening"' && break
  else
    tail -n "+$((from + 1))" "$LOG_FILE" | grep -q '"agent listening"' && break
  fi
  i=$((i + 1))
  if [ $i -gt 60 ]; then say "the agent is running but has not said it listens after 60 s:"; logs >&2; break; fi
  sleep 1
done

case "$handed_over" in
  yes) say "upgraded: the running engines were left for the new agent, which adopts them" ;;
  no) say "upgraded: the previous agent could not hand its engines over (it predates AGENT_KEEP_ENGINES), so it stopped them; they are launched again" ;;
esac
say "fleet-agent $VERSION runs ($MODE) from $BIN, settings in $ENV_FILE"
say "  log:  $follow"
say "  stop: $stop"
say "  upgrade: run the same line again"
`;
}

/** What `/install.sh` answers when the manager has no agent to hand out: a script that says so. */
export function missingAgentScript(message: string): string {
  return `#!/bin/sh
printf '%s\\n' ${shellQuote(`fleet-agent install: ${message}`)} >&2
exit 1
`;
}
