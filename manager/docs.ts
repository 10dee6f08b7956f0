/**
 * `/openapi.json`, derived from the route definitions (nothing here lists endpoints), and
 * `/docs`, Swagger UI over that document. The UI's files come from the `swagger-ui-dist`
 * package and are served by the manager under `/docs/assets/`, so the page renders with no
 * network beyond the manager (an air-gapped cluster, a laptop offline).
 */
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { z } from "zod";
import { AppError, quote } from "../kit/errors.ts";
import { errors, routeGroup } from "./routes/define.ts";

/** The document as `@hono/zod-openapi` generates it. */
export type ApiDocument = ReturnType<OpenAPIHono["getOpenAPIDocument"]>;

const methods = ["get", "put", "post", "delete", "patch", "head", "options"] as const;

const tags = ["Documentation"];

/** The files of the UI, by the name they are served under, with their content type. */
const uiFiles: Record<string, { file: string; type: string }> = {
  "swagger-ui.css": { file: "swagger-ui.css", type: "text/css; charset=utf-8" },
  "swagger-ui-bundle.js": {
    file: "swagger-ui-bundle.js",
    type: "text/javascript; charset=utf-8",
  },
  "favicon-32x32.png": { file: "favicon-32x32.png", type: "image/png" },
  "favicon-16x16.png": { file: "favicon-16x16.png", type: "image/png" },
};

// Relative to the page (`/docs`), so the UI keeps working behind a proxy that adds a prefix.
const initScript = `window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  // The default validator is a public web service; the page must not reach the internet.
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
`;

/** `/openapi.json`, `/docs` and the UI's files; `document` is generated on first use. */
export function docsRoutes(document: () => ApiDocument): OpenAPIHono {
  const app = routeGroup();
  const assets = new Map<string, Promise<Uint8Array<ArrayBuffer>>>();

  app.openapi(
    createRoute({
      method: "get",
      path: "/openapi.json",
      tags,
      summary: "This document (OpenAPI 3.0), generated from the route definitions",
      security: [],
      responses: {
        200: {
          description: "the OpenAPI document",
          content: {
            "application/json": {
              schema: z.looseObject({
                openapi: z.string(),
                info: z.looseObject({ title: z.string(), version: z.string() }),
                paths: z.record(z.string(), z.looseObject({})),
              }),
            },
          },
        },
      },
    }),
    (c) => c.json(document(), 200),
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/docs",
      tags,
      summary: "API reference (Swagger UI), served entirely by the manager",
      security: [],
      responses: {
        200: { description: "HTML page", content: { "text/html": { schema: z.string() } } },
      },
    }),
    (c) => c.html(docsPage(document()), 200),
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/docs/assets/{file}",
      tags,
      summary: "A file of the API reference page (script, stylesheet, icon)",
      security: [],
      request: { params: z.object({ file: z.string() }) },
      responses: {
        200: {
          description: "the file",
          content: {
            "text/javascript": { schema: z.string() },
            "text/css": { schema: z.string() },
            "image/png": { schema: z.string().describe("binary") },
          },
        },
        ...errors([404, "`not_found`: not a file of the page"]),
      },
    }),
    async (c) => {
      const { file } = c.req.valid("param");
      const headers = { "cache-control": "public, max-age=3600" };
      if (file === "init.js") {
        return c.body(initScript, 200, { ...headers, "content-type": "text/javascript" });
      }
      const entry = uiFiles[file];
      if (!entry) throw new AppError("not_found", `no documentation asset named ${quote(file)}`);
      let bytes = assets.get(file);
      if (!bytes) {
        bytes = readUiFile(entry.file);
        assets.set(file, bytes);
        // A failed read is not cached: the next request tries again.
        bytes.catch(() => assets.delete(file));
      }
      return c.body(await bytes, 200, { ...headers, "content-type": entry.type });
    },
  );

  return app;
}

/**
 * Reads a file of the `swagger-ui-dist` package. Only the manager's Bun and Node entries
 * serve /docs, so the file system is loaded here, on first use, keeping the app module
 * itself web-standard.
 */
async function readUiFile(name: string): Promise<Uint8Array<ArrayBuffer>> {
  const [{ readFile }, { createRequire }] = await Promise.all([
    import("node:fs/promises"),
    import("node:module"),
  ]);
  const path = createRequire(import.meta.url).resolve(`swagger-ui-dist/${name}`);
  return new Uint8Array(await readFile(path));
}

/**
 * The page: Swagger UI's stylesheet and script from /docs/assets, and, for a browser without
 * JavaScript (or a terminal), the list of operations from the same document.
 */
function docsPage(document: ApiDocument): string {
  const rows: string[] = [];
  for (const [path, item] of Object.entries(document.paths)) {
    for (const method of methods) {
      const operation = item[method];
      if (!operation) continue;
      rows.push(
        `<tr><td><code>${method.toUpperCase()}</code></td><td><code>${escapeHtml(path)}</code></td><td>${escapeHtml(operation.summary ?? "")}</td></tr>`,
      );
    }
  }
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vllm-fleet API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="docs/assets/favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui"></div>
<noscript>
<h1>vllm-fleet API</h1>
<p>Machine-readable: <a href="openapi.json">/openapi.json</a>. Errors use OpenAI's shape <code>{"error":{"message","type","param","code"}}</code>.</p>
<table><thead><tr><th>method</th><th>path</th><th>what it does</th></tr></thead><tbody>
${rows.join("\n")}
</tbody></table>
</noscript>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/assets/init.js"></script>
</body>
</html>
`;
}

function escapeHtml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}
