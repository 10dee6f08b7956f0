/**
 * The console's stylesheet and script, served by the manager itself (in the single
 * executable too: they are strings in the bundle, not files read at run time). No CDN, no
 * web font: the page looks the same offline.
 */

export const consoleCss = `
:root {
  color-scheme: light dark;
  --bg: #f7f7f8; --fg: #1b1d21; --muted: #5d6470; --card: #ffffff; --line: #d9dce1;
  --accent: #2456c7; --ok: #1a7f37; --warn: #9a6700; --bad: #c62828;
  --bar-used: #2456c7; --bar-claimed: #8fb0f0; --bar-free: #e3e6eb;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #121417; --fg: #e6e8eb; --muted: #9aa3ae; --card: #1b1e23; --line: #30353d;
    --accent: #7aa2f7; --ok: #56d364; --warn: #e3b341; --bad: #ff7b72;
    --bar-used: #7aa2f7; --bar-claimed: #3b5a9a; --bar-free: #2a2f37;
  }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); }
a { color: var(--accent); }
a:focus-visible, button:focus-visible, input:focus-visible, select:focus-visible, textarea:focus-visible {
  outline: 3px solid var(--accent); outline-offset: 2px;
}
.skip { position: absolute; left: -999px; }
.skip:focus { left: 8px; top: 8px; background: var(--card); padding: 6px; z-index: 2; }
header { display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: center; padding: 10px 16px;
  border-bottom: 1px solid var(--line); background: var(--card); }
header .brand { font-weight: 700; margin-right: 8px; }
nav ul { display: flex; flex-wrap: wrap; gap: 4px; list-style: none; margin: 0; padding: 0; }
nav a { display: inline-block; padding: 6px 10px; border-radius: 6px; text-decoration: none; color: var(--fg); }
nav a[aria-current="page"] { background: var(--accent); color: var(--card); }
header form { margin-left: auto; }
main { padding: 16px; max-width: 1200px; margin: 0 auto; }
h1 { font-size: 1.3rem; margin: 0 0 12px; }
h2 { font-size: 1.05rem; margin: 20px 0 8px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; margin: 0 0 12px; }
.card h3 { margin: 0 0 6px; font-size: 1rem; display: flex; flex-wrap: wrap; gap: 8px; align-items: center; }
.grid { display: grid; gap: 12px; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); }
.muted { color: var(--muted); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: .8rem; border: 1px solid currentColor; }
.s-online, .s-ready, .s-ok { color: var(--ok); }
.s-starting, .s-pending, .s-draining, .s-degraded, .s-stopping, .s-unknown { color: var(--warn); }
.s-offline, .s-failed, .s-lost, .s-unreachable, .s-revoked, .s-stopped { color: var(--bad); }
.problem { border-left: 4px solid var(--bad); padding: 6px 10px; margin: 6px 0; background: color-mix(in srgb, var(--bad) 10%, transparent); }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; background: var(--card); }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: .85rem; color: var(--muted); font-weight: 600; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; word-break: break-all; }
svg.bar { width: 100%; height: 12px; display: block; border-radius: 3px; }
svg.bar .used { fill: var(--bar-used); } svg.bar .claimed { fill: var(--bar-claimed); } svg.bar .free { fill: var(--bar-free); }
svg.chart { width: 180px; height: 40px; display: block; }
svg.chart .bar { fill: var(--accent); }
svg.chart .axis { stroke: var(--line); stroke-width: 1; vector-effect: non-scaling-stroke; }
svg.chart polyline { fill: none; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
svg.chart .p50 { stroke: var(--accent); } svg.chart .p99 { stroke: var(--warn); stroke-dasharray: 3 2; }
nav.filters a { padding: 4px 10px; border-radius: 6px; }
nav.filters a[aria-current="page"] { background: var(--accent); color: var(--card); }
progress { width: 100%; height: 12px; accent-color: var(--accent); }
pre.log { max-height: 12em; overflow: auto; background: var(--bg); padding: 6px; border-radius: 4px; font-size: .8rem; white-space: pre-wrap; }
form.inline { display: inline; }
.form-grid { display: grid; gap: 8px 12px; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); }
label { display: flex; flex-direction: column; gap: 2px; font-size: .9rem; }
input, select, textarea, button { font: inherit; color: inherit; background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 6px 8px; }
button { cursor: pointer; background: var(--accent); color: var(--card); border-color: var(--accent); }
button.danger { background: transparent; color: var(--bad); border-color: var(--bad); }
button.plain { background: transparent; color: var(--fg); border-color: var(--line); }
.error { color: var(--bad); font-weight: 600; }
.notice { border: 1px solid var(--ok); padding: 8px 10px; border-radius: 6px; margin: 0 0 12px; }
.live-state { font-size: .8rem; }
.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; margin-bottom: 10px; }
@media (max-width: 600px) {
  main { padding: 10px; }
  .grid { grid-template-columns: 1fr; }
  header form { margin-left: 0; }
}
`;

/**
 * Live refresh: every 2 s the script asks for the page's live sections only
 * (`X-Console-Live: 1`) and swaps those whose HTML changed. A section holding the keyboard
 * focus waits until focus leaves it, so tabbing through a table is not reset under the user.
 * Forms sit outside the live sections and are never replaced.
 */
export const consoleJs = `(() => {
  "use strict";
  const state = document.getElementById("live-state");
  const sections = () => Array.from(document.querySelectorAll("[data-live]"));
  if (sections().length === 0) return;
  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(location.pathname + location.search, {
        headers: { "X-Console-Live": "1" },
        credentials: "same-origin",
        cache: "no-store",
        redirect: "manual",
      });
      if (response.status !== 200) {
        if (state) state.textContent = response.type === "opaqueredirect" || response.status === 401 ? "signed out: reload" : "update failed (" + response.status + ")";
        return;
      }
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const fresh of doc.querySelectorAll("[data-live]")) {
        const current = document.getElementById(fresh.id);
        if (!current || current.innerHTML === fresh.innerHTML) continue;
        if (current.contains(document.activeElement)) continue;
        current.innerHTML = fresh.innerHTML;
      }
      if (state) state.textContent = "live, updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (state) state.textContent = "manager unreachable, retrying";
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, 2000);
})();
`;
