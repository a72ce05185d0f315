// Writes one TypeScript module per dashboard under generated/: the dashboard's JSON as an object
// literal typed as @grafana/schema's Dashboard, so that `tsc` checks every field name and value
// type (excess properties included) against Grafana's published schema.
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dashboards = process.env.DASHBOARDS_DIR ?? join(here, "..", "..", "..", "grafana", "dashboards");
const out = join(here, "generated");
rmSync(out, { recursive: true, force: true });
mkdirSync(out);
const files = readdirSync(dashboards).filter((f) => f.endsWith(".json")).sort();
if (files.length === 0) throw new Error(`no dashboards in ${dashboards}`);
for (const file of files) {
  const json = JSON.parse(readFileSync(join(dashboards, file), "utf8"));
  const name = file.replace(/\.json$/, "").replace(/[^A-Za-z0-9_]/g, "_");
  writeFileSync(
    join(out, `${name}.ts`),
    `// generated from grafana/dashboards/${file} by generate.mjs\n` +
      `import type { Dashboard } from "@grafana/schema";\n\n` +
      `export const dashboard: Dashboard = ${JSON.stringify(json, null, 2)};\n`,
  );
}
console.log(`generated ${files.length} dashboard modules`);
