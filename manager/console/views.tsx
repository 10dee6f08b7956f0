import type { Child, FC, PropsWithChildren } from "hono/jsx";
import type { schema } from "../../db/index.ts";
import type {
  ApiKeyInfo,
  InstanceRecord,
  ModelInfo,
  RouteEntry,
  RouteLoad,
  WorkerInfo,
  WorkerPath,
} from "../../protocol/index.ts";
import { routingPolicies } from "../../protocol/index.ts";

import type { KeyUsage } from "./traffic.ts";

export type EventRow = typeof schema.events.$inferSelect;

/** The console's pages, in the order of the navigation. */
export const views = [
  { path: "/", title: "Fleet" },
  { path: "/models", title: "Models" },
  { path: "/routes", title: "Routes" },
  { path: "/traffic", title: "Traffic" },
  { path: "/events", title: "Events" },
  { path: "/keys", title: "Keys" },
] as const;

type LayoutProps = PropsWithChildren<{
  title: string;
  path: string;
  csrf: string;
  /** Whether a sign-out button makes sense (a browser session). */
  signedIn: boolean;
}>;

export const Layout: FC<LayoutProps> = ({ title, path, csrf, signedIn, children }) => (
  <html lang="en">
    <head>
      <meta charset="utf-8" />
      <meta name="viewport" content="width=device-width, initial-scale=1" />
      <title>{`${title} · vllm-fleet`}</title>
      <link rel="stylesheet" href="/console/assets/console.css" />
      <script src="/console/assets/console.js" defer />
    </head>
    <body>
      <a class="skip" href="#content">
        Skip to content
      </a>
      <header>
        <span class="brand">vllm-fleet</span>
        <nav aria-label="Console">
          <ul>
            {views.map((view) => (
              <li>
                <a href={view.path} aria-current={view.path === path ? "page" : undefined}>
                  {view.title}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <span id="live-state" class="live-state muted" aria-live="polite" />
        {signedIn ? (
          <form method="post" action="/logout">
            <input type="hidden" name="csrf" value={csrf} />
            <button type="submit" class="plain">
              Sign out
            </button>
          </form>
        ) : null}
      </header>
      <main id="content">
        <h1>{title}</h1>
        {children}
      </main>
    </body>
  </html>
);

export const LoginPage: FC<{ csrf: string; next: string; error?: string }> = (props) => (
  <html lang="en">
    <head>
      <meta charset="utf-8" />
      <meta name="viewport" content="width=device-width, initial-scale=1" />
      <title>Sign in · vllm-fleet</title>
      <link rel="stylesheet" href="/console/assets/console.css" />
    </head>
    <body>
      <main id="content">
        <h1>vllm-fleet: sign in</h1>
        <form method="post" action="/login" class="card">
          <input type="hidden" name="csrf" value={props.csrf} />
          <input type="hidden" name="next" value={props.next} />
          <label>
            Admin token (ADMIN_TOKEN)
            <input
              type="password"
              name="token"
              autocomplete="current-password"
              required
              autofocus
            />
          </label>
          {props.error ? (
            <p class="error" role="alert">
              {props.error}
            </p>
          ) : null}
          <p>
            <button type="submit">Sign in</button>
          </p>
        </form>
      </main>
    </body>
  </html>
);

/** A scrolling table with one header row; the rows are its children. */
export const Table: FC<PropsWithChildren<{ headers: string[] }>> = ({ headers, children }) => (
  <div class="table-wrap">
    <table>
      <thead>
        <tr>
          {headers.map((header) => (
            <th>{header}</th>
          ))}
        </tr>
      </thead>
      <tbody>{children}</tbody>
    </table>
  </div>
);

const Badge: FC<{ status: string }> = ({ status }) => (
  <span class={`badge s-${status}`}>{status}</span>
);

const gib = (mib: number) => `${(mib / 1024).toFixed(1)} GiB`;

/** A horizontal bar of fractions (0..1) drawn as SVG: no inline style, nothing to load. */
const Bar: FC<{ parts: { fraction: number; kind: string }[]; label: string }> = (props) => {
  let x = 0;
  return (
    <svg
      class="bar"
      viewBox="0 0 100 10"
      preserveAspectRatio="none"
      role="img"
      aria-label={props.label}
    >
      <rect class="free" x="0" y="0" width="100" height="10" />
      {props.parts.map((part) => {
        const width = Math.max(0, Math.min(100 - x, part.fraction * 100));
        const rect = (
          <rect class={part.kind} x={x.toFixed(2)} y="0" width={width.toFixed(2)} height="10" />
        );
        x += width;
        return rect;
      })}
    </svg>
  );
};

const PathCell: FC<{ name: string; path: WorkerPath | null; managed: boolean }> = (props) => {
  if (!props.path) return <span class="muted">{props.name}: none</span>;
  const { path } = props;
  const state = path.reachable === null ? "unknown" : path.reachable ? "ok" : "unreachable";
  return (
    <div>
      <strong>{props.name}</strong> <code>{path.url}</code>{" "}
      <span class={`badge s-${state}`}>
        {state === "ok" ? `reachable${path.rtt_ms === null ? "" : `, ${path.rtt_ms} ms`}` : state}
      </span>
      {props.managed ? <span class="muted"> (manager uses this one)</span> : null}
      {path.error ? <div class="muted">{path.error}</div> : null}
    </div>
  );
};

/** Per worker, per GPU index: the fraction of memory instances claim (gpu_memory_utilization). */
export type Claims = Map<string, Map<number, number>>;

export const FleetView: FC<{ workers: WorkerInfo[]; claims: Claims }> = ({ workers, claims }) => (
  <section id="fleet" data-live>
    {workers.length === 0 ? (
      <p class="muted">
        No worker has registered yet. On a GPU host run the install line from{" "}
        <code>fleet install-line</code> or see docs/operations.md.
      </p>
    ) : null}
    <div class="grid">
      {workers.map((w) => (
        <article class="card" aria-label={`worker ${w.worker_id}`}>
          <h3>
            <span>{w.worker_id}</span> <Badge status={w.status} />
            <span class="muted">agent {w.agent_version ?? "unknown"}</span>
          </h3>
          {w.problems.map((problem) => (
            <p class="problem" role="alert">
              {problem}
            </p>
          ))}
          <PathCell
            name="internal"
            path={w.paths.internal}
            managed={w.management_path === "internal"}
          />
          <PathCell name="public" path={w.paths.public} managed={w.management_path === "public"} />
          <p class="muted">
            last heartbeat <time datetime={w.last_heartbeat}>{w.last_heartbeat}</time>
          </p>
          {w.gpu_info.warning ? <p class="problem">{w.gpu_info.warning}</p> : null}
          {w.gpu_info.gpus.map((g) => {
            const total = g.memory_total_mib || 1;
            const used = (g.memory_used_mib ?? 0) / total;
            const claim = Math.min(1, claims.get(w.worker_id)?.get(g.index) ?? 0);
            const claimedMore = Math.max(0, claim - used);
            const label = `GPU ${g.index} ${g.name}: used ${gib(g.memory_used_mib ?? 0)}, claimed ${gib(claim * total)}, free ${gib(g.memory_free_mib ?? total - (g.memory_used_mib ?? 0))} of ${gib(total)}${g.utilization_pct === null ? "" : `, utilisation ${g.utilization_pct}%`}`;
            return (
              <div class="gpu">
                <div>
                  GPU {g.index} <span class="muted">{g.name}</span>
                </div>
                <Bar
                  label={label}
                  parts={[
                    { fraction: used, kind: "used" },
                    { fraction: claimedMore, kind: "claimed" },
                  ]}
                />
                <div class="muted">{label.slice(label.indexOf(":") + 2)}</div>
              </div>
            );
          })}
          {w.instances.length > 0 ? (
            <p>
              {w.instances.map((i) => (
                <span>
                  <a href="/models">{i.alias}</a> <Badge status={i.status} />{" "}
                </span>
              ))}
            </p>
          ) : null}
        </article>
      ))}
    </div>
  </section>
);

const seconds = (s: number | null | undefined) => {
  if (s === null || s === undefined) return "?";
  if (s < 90) return `${Math.round(s)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
};

const InstanceRow: FC<{ instance: InstanceRecord; csrf: string }> = ({ instance: i, csrf }) => {
  const p = i.progress;
  return (
    <tr>
      <td>{i.worker_id}</td>
      <td>{i.gpu_ids.join(", ")}</td>
      <td>{i.port ?? "–"}</td>
      <td>
        <Badge status={i.status} />
        {i.restarts > 0 ? (
          <span class="muted">
            {" "}
            {i.restarts} restart{i.restarts === 1 ? "" : "s"}
          </span>
        ) : null}
      </td>
      <td>
        {p && i.status === "starting" ? (
          <div class="progress">
            <div>
              {p.phase.replaceAll("_", " ")}
              {p.percent === null ? "" : ` ${Math.round(p.percent)}%`}
              {p.detail ? <span class="muted"> {p.detail}</span> : null}
              <span class="muted">
                {" "}
                · {seconds(p.elapsed_s)} elapsed · ETA {seconds(p.eta_s)}
              </span>
            </div>
            {p.percent === null ? (
              <progress aria-label={`${i.alias} on ${i.worker_id}: ${p.phase}`} />
            ) : (
              <progress
                max="100"
                value={String(Math.round(p.percent))}
                aria-label={`${i.alias} on ${i.worker_id}: ${p.phase}`}
              />
            )}
            {p.last_line ? <div class="muted mono">{p.last_line}</div> : null}
          </div>
        ) : null}
        {i.last_error ? <pre class="log">{i.last_error}</pre> : null}
        {i.next_retry_at ? <div class="muted">retried at {i.next_retry_at}</div> : null}
      </td>
      <td>
        {i.status === "ready" ? (
          // Only a ready engine restarts (the API says why not otherwise).
          <form
            method="post"
            action={`/models/${encodeURIComponent(i.alias)}/instances/${encodeURIComponent(i.id)}/restart`}
            class="inline"
          >
            <input type="hidden" name="csrf" value={csrf} />
            <button
              type="submit"
              class="plain"
              aria-label={`Restart ${i.alias} on ${i.worker_id}`}
              title="Stop the engine and launch it again on the same GPUs and port; its route is unserved until it is ready"
            >
              Restart
            </button>
          </form>
        ) : null}
      </td>
    </tr>
  );
};

export const ModelsLive: FC<{ models: ModelInfo[]; csrf: string }> = ({ models, csrf }) => (
  <section id="models" data-live>
    {models.length === 0 ? <p class="muted">No model is registered.</p> : null}
    {models.map((m) => (
      <article class="card" aria-label={`model ${m.alias}`}>
        <h3>
          <span>{m.alias}</span> <Badge status={m.status} />
          <span class="muted">{m.model_name}</span>
          <span class="muted">
            {m.instances.filter((i) => i.status === "ready").length}/{m.replicas} ready
          </span>
          <span class="muted">routing: {m.routing.replaceAll("_", " ")}</span>
          <form
            method="post"
            action={`/models/${encodeURIComponent(m.alias)}/delete`}
            class="inline"
          >
            <input type="hidden" name="csrf" value={csrf} />
            <button type="submit" class="danger" aria-label={`Delete ${m.alias}`}>
              Delete
            </button>
          </form>
        </h3>
        <Table headers={["Worker", "GPUs", "Port", "State", "Progress / last error", "Actions"]}>
          {m.instances.map((instance) => (
            <InstanceRow instance={instance} csrf={csrf} />
          ))}
        </Table>
      </article>
    ))}
  </section>
);

/** What an action on the Models page came to, shown above the models (outside the live part). */
export type Notice = { kind: "ok" | "error"; text: string };

export const NoticeView: FC<{ notice: Notice }> = ({ notice }) =>
  notice.kind === "ok" ? (
    <p class="notice" role="status">
      {notice.text}
    </p>
  ) : (
    <p class="error" role="alert">
      {notice.text}
    </p>
  );

/** What the register form was sent with, to show it again next to the error. */
export type RegisterForm = Record<string, string>;

const Field: FC<{
  name: string;
  label: string;
  form: RegisterForm;
  hint?: string;
  type?: string;
  required?: boolean;
}> = (props) => (
  <label>
    {props.label}
    <input
      name={props.name}
      type={props.type ?? "text"}
      value={props.form[props.name] ?? ""}
      required={props.required}
      placeholder={props.hint}
    />
  </label>
);

export const RegisterModelForm: FC<{ csrf: string; form: RegisterForm; error?: string }> = (
  props,
) => (
  <form method="post" action="/models" class="card" aria-labelledby="register-title">
    <h2 id="register-title">Register a model</h2>
    <input type="hidden" name="csrf" value={props.csrf} />
    {props.error ? (
      <p class="error" role="alert">
        {props.error}
      </p>
    ) : null}
    <div class="form-grid">
      <Field name="alias" label="Alias" form={props.form} required hint="chat" />
      <Field
        name="model_name"
        label="Model (Hugging Face id or path)"
        form={props.form}
        required
        hint="Qwen/Qwen3-8B"
      />
      <Field name="replicas" label="Replicas" form={props.form} type="number" hint="1" />
      <Field
        name="gpu_memory_utilization"
        label="GPU memory utilisation"
        form={props.form}
        hint="0.9"
      />
      <Field
        name="tensor_parallel_size"
        label="Tensor parallel size"
        form={props.form}
        type="number"
        hint="1"
      />
      <Field
        name="max_model_len"
        label="Max model length"
        form={props.form}
        type="number"
        hint="engine default"
      />
      <Field name="dtype" label="dtype" form={props.form} hint="auto" />
      <Field name="worker_id" label="Pin to worker" form={props.form} hint="any" />
      <Field name="gpu_ids" label="GPU ids on that worker" form={props.form} hint="0,1" />
      <label>
        Placement
        <select name="placement">
          {["binpack", "spread"].map((p) => (
            <option value={p} selected={(props.form.placement ?? "binpack") === p}>
              {p}
            </option>
          ))}
        </select>
      </label>
    </div>
    <label>
      Routing between replicas
      <select name="routing">
        {routingPolicies.map((p) => (
          <option value={p} selected={(props.form.routing ?? "prefix_affinity") === p}>
            {p.replaceAll("_", " ")}
          </option>
        ))}
      </select>
    </label>
    <label>
      Extra vLLM arguments, one per line
      <textarea name="extra_args" rows={2}>
        {props.form.extra_args ?? ""}
      </textarea>
    </label>
    <p>
      <button type="submit">Register</button>
    </p>
  </form>
);

const LoadCell: FC<{ load: RouteLoad | undefined }> = ({ load }) => {
  if (!load) return <span class="muted">–</span>;
  const { running, waiting, kv, hit } = load.load;
  const percent = (v: number) => `${Math.round(v * 100)}%`;
  return (
    <span title={`reported ${load.age_s} s ago`}>
      {running} · {waiting} · {percent(kv)} · {hit === null ? "–" : percent(hit)}
    </span>
  );
};

export const RoutesView: FC<{
  routes: RouteEntry[];
  /** Each route's last engine load, keyed `worker_id alias`. */
  loads: Map<string, RouteLoad>;
  publicUrls: Set<string>;
  version: string | null;
}> = (props) => (
  <section id="routes" data-live>
    <p class="muted">
      Snapshot version {props.version ?? "not loaded yet"}; routers send traffic only to ready
      routes.
    </p>
    {props.routes.length === 0 ? <p class="muted">No route: register a model first.</p> : null}
    {props.routes.length > 0 ? (
      <Table
        headers={[
          "Alias",
          "Model",
          "Worker",
          "URL",
          "Path",
          "Routing",
          "Ready",
          "Load (running · waiting · KV cache · prefix hits)",
        ]}
      >
        {props.routes.map((r) => (
          <tr>
            <td>{r.alias}</td>
            <td>{r.model_name}</td>
            <td>{r.worker_id}</td>
            <td>
              <code>{r.worker_url}</code>
            </td>
            <td>{props.publicUrls.has(r.worker_url) ? "public" : "internal"}</td>
            <td>{r.routing.replaceAll("_", " ")}</td>
            <td>
              <Badge status={r.ready ? "ready" : "starting"} />
            </td>
            <td class="load">
              <LoadCell load={props.loads.get(`${r.worker_id} ${r.alias}`)} />
            </td>
          </tr>
        ))}
      </Table>
    ) : null}
  </section>
);

export const EventsView: FC<{
  events: EventRow[];
  workers: string[];
  aliases: string[];
  worker: string;
  alias: string;
}> = (props) => (
  <>
    <form method="get" action="/events" class="filters" aria-label="Filter events">
      <label>
        Worker
        <select name="worker">
          <option value="">all</option>
          {props.workers.map((w) => (
            <option value={w} selected={w === props.worker}>
              {w}
            </option>
          ))}
        </select>
      </label>
      <label>
        Model
        <select name="model">
          <option value="">all</option>
          {props.aliases.map((a) => (
            <option value={a} selected={a === props.alias}>
              {a}
            </option>
          ))}
        </select>
      </label>
      <button type="submit">Filter</button>
    </form>
    <section id="events" data-live>
      {props.events.length === 0 ? <p class="muted">No event.</p> : null}
      {props.events.length > 0 ? (
        <Table headers={["Time", "Event", "Worker", "Model", "Change", "Message"]}>
          {props.events.map((e) => (
            <tr>
              <td>
                <time datetime={e.ts.toISOString()}>
                  {e.ts.toISOString().replace("T", " ").slice(0, 19)}
                </time>
              </td>
              <td>{e.kind}</td>
              <td>{e.workerId ?? ""}</td>
              <td>{e.alias ?? ""}</td>
              <td>
                {e.fromStatus || e.toStatus ? `${e.fromStatus ?? "–"} → ${e.toStatus ?? "–"}` : ""}
              </td>
              <td>{e.message ?? ""}</td>
            </tr>
          ))}
        </Table>
      ) : null}
    </section>
  </>
);

export const KeysView: FC<{
  keys: ApiKeyInfo[];
  usage: Map<string, KeyUsage>;
  csrf: string;
  created?: { name: string; key: string };
  error?: string;
}> = (props) => (
  <>
    {props.created ? (
      <div class="notice" role="status">
        <p>
          New key <strong>{props.created.name}</strong>. Copy it now: it is shown this once and the
          manager keeps only its hash.
        </p>
        <p>
          <code id="new-key">{props.created.key}</code>
        </p>
      </div>
    ) : null}
    <form method="post" action="/keys" class="card filters" aria-label="Create an API key">
      <input type="hidden" name="csrf" value={props.csrf} />
      <label>
        Name
        <input name="name" placeholder="default" />
      </label>
      <button type="submit">Create key</button>
      {props.error ? (
        <p class="error" role="alert">
          {props.error}
        </p>
      ) : null}
    </form>
    <section id="keys" data-live>
      {props.keys.length === 0 ? (
        <p class="muted">No API key: the OpenAI surface is open on loopback until the first one.</p>
      ) : (
        <Table
          headers={[
            "Name",
            "Prefix",
            "Created",
            "Requests (24 h)",
            "Tokens (24 h)",
            "Last request",
            "State",
            "",
          ]}
        >
          {props.keys.map((k) => (
            <tr data-key={k.name}>
              <td>{k.name}</td>
              <td>
                <code>{k.prefix}…</code>
              </td>
              <td>{k.created_at}</td>
              <td class="requests">{props.usage.get(k.id)?.requests ?? 0}</td>
              <td>{props.usage.get(k.id)?.tokens ?? 0}</td>
              <td>{props.usage.get(k.id)?.lastAt ?? "–"}</td>
              <td>{k.revoked_at ? <Badge status="revoked" /> : <Badge status="ok" />}</td>
              <td>
                {k.revoked_at ? null : (
                  <form
                    method="post"
                    action={`/keys/${encodeURIComponent(k.id)}/revoke`}
                    class="inline"
                  >
                    <input type="hidden" name="csrf" value={props.csrf} />
                    <button type="submit" class="danger" aria-label={`Revoke ${k.name}`}>
                      Revoke
                    </button>
                  </form>
                )}
              </td>
            </tr>
          ))}
        </Table>
      )}
    </section>
  </>
);

export type { Child };
