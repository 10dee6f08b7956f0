/**
 * A small Prometheus registry (text format 0.0.4) with web-standard code only, so the same
 * metrics render on Bun, Node and workerd. Labels stay low-cardinality by construction:
 * callers pass aliases from the route table (or "unknown"), never raw client input.
 */

type Labels = Record<string, string>;
type Kind = "counter" | "gauge" | "histogram";

type Family = {
  name: string;
  help: string;
  kind: Kind;
  buckets?: readonly number[];
  /** label text (`a="x",b="y"`) → value (counter/gauge), in a cell bound series update */
  values: Map<string, { value: number }>;
  /** label text → per-bucket counts (non-cumulative) + sum + count */
  histograms: Map<string, Histogram>;
};

type Histogram = { counts: number[]; sum: number; count: number };

/** A counter or gauge series with its labels fixed: updates skip formatting and lookups. */
export type BoundSeries = { add(by: number): void };
/** A histogram series with its labels fixed. */
export type BoundHistogram = { observe(value: number): void };

/** Request latencies in seconds: sub-millisecond proxying up to vLLM's long generations. */
export const latencyBuckets = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
] as const;

const needsEscape = /[\\"\n]/;

function escapeLabel(value: string): string {
  // Labels are aliases, statuses and worker ids: almost never anything to escape, and this
  // runs several times per proxied request.
  if (!needsEscape.test(value)) return value;
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function labelText(labels: Labels | undefined): string {
  if (!labels) return "";
  let text = "";
  for (const key in labels) {
    text += `${text ? "," : ""}${key}="${escapeLabel(labels[key] ?? "")}"`;
  }
  return text;
}

export class Metrics {
  private readonly families = new Map<string, Family>();
  private readonly collectors: Array<() => void> = [];
  private readonly asyncCollectors: Array<() => Promise<void>> = [];
  /** The async collection in flight: concurrent scrapes share it (one read per moment). */
  private collecting: Promise<void> | undefined;

  private family(name: string, kind: Kind, help: string, buckets?: readonly number[]): Family {
    let family = this.families.get(name);
    if (!family) {
      family = { name, kind, help, buckets, values: new Map(), histograms: new Map() };
      this.families.set(name, family);
    }
    return family;
  }

  /** Declares a family so it renders (with HELP/TYPE) before its first sample. */
  declare(name: string, kind: Kind, help: string, buckets?: readonly number[]): void {
    this.family(name, kind, help, buckets);
  }

  inc(name: string, labels?: Labels, by = 1, help = ""): void {
    this.cell(this.family(name, "counter", help), labels).value += by;
  }

  set(name: string, labels: Labels | undefined, value: number, help = ""): void {
    this.cell(this.family(name, "gauge", help), labels).value = value;
  }

  add(name: string, labels: Labels | undefined, by: number, help = ""): void {
    this.cell(this.family(name, "gauge", help), labels).value += by;
  }

  observe(name: string, labels: Labels | undefined, value: number, help = ""): void {
    const family = this.family(name, "histogram", help, latencyBuckets);
    record(family.buckets ?? latencyBuckets, this.histogram(family, labels), value);
  }

  /**
   * The series `name{labels}` of a counter or gauge, bound for the hot path (per alias,
   * made once per route table): `series.add(1)` costs an addition.
   */
  series(name: string, labels: Labels, kind: "counter" | "gauge" = "counter"): BoundSeries {
    const cell = this.cell(this.family(name, kind, ""), labels);
    return {
      add(by: number) {
        cell.value += by;
      },
    };
  }

  /** The histogram series `name{labels}`, bound like `series`. */
  histogramSeries(name: string, labels: Labels): BoundHistogram {
    const family = this.family(name, "histogram", "", latencyBuckets);
    const buckets = family.buckets ?? latencyBuckets;
    const histogram = this.histogram(family, labels);
    return {
      observe(value: number) {
        record(buckets, histogram, value);
      },
    };
  }

  private cell(family: Family, labels: Labels | undefined): { value: number } {
    const key = labelText(labels);
    let cell = family.values.get(key);
    if (!cell) {
      cell = { value: 0 };
      family.values.set(key, cell);
    }
    return cell;
  }

  private histogram(family: Family, labels: Labels | undefined): Histogram {
    const buckets = family.buckets ?? latencyBuckets;
    const key = labelText(labels);
    let histogram = family.histograms.get(key);
    if (!histogram) {
      histogram = { counts: new Array<number>(buckets.length).fill(0), sum: 0, count: 0 };
      family.histograms.set(key, histogram);
    }
    return histogram;
  }

  /** Forgets every series of `name` (a gauge set afresh at each scrape: gone labels go). */
  clear(name: string): void {
    const family = this.families.get(name);
    family?.values.clear();
    family?.histograms.clear();
  }

  /** Runs before each render: lets a component refresh gauges computed on demand. */
  collect(collector: () => void): void {
    this.collectors.push(collector);
  }

  /**
   * Runs before each `scrape()` (not `render()`): gauges read from a database or another
   * process. A collector handles its own failures (keeping its last values is the usual
   * answer); one still running after `timeoutMs` is not waited for (`onTimeout` says so),
   * so a slow database never holds a scrape.
   */
  collectAsync(
    collector: () => Promise<void>,
    options: { timeoutMs?: number; onTimeout?: () => void } = {},
  ): void {
    const timeoutMs = options.timeoutMs ?? 2000;
    // A read that outlived its scrape is waited on by the next one, never doubled: a database
    // that hangs sees one read at a time, however often it is scraped.
    let running: Promise<void> | undefined;
    this.asyncCollectors.push(() => {
      running ??= collector()
        .catch(() => {})
        .finally(() => {
          running = undefined;
        });
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          options.onTimeout?.();
          resolve();
        }, timeoutMs);
      });
      return Promise.race([running, timeout]).finally(() => clearTimeout(timer));
    });
  }

  /** What `/metrics` answers: the async collectors' fresh values, then `render()`. */
  async scrape(): Promise<string> {
    if (this.asyncCollectors.length > 0) {
      this.collecting ??= Promise.all(this.asyncCollectors.map((collector) => collector()))
        .then(() => {})
        .finally(() => {
          this.collecting = undefined;
        });
      await this.collecting;
    }
    return this.render();
  }

  /** The names of the declared families (what a dashboard may reference). */
  names(): string[] {
    return [...this.families.keys()];
  }

  render(): string {
    for (const collector of this.collectors) collector();
    const lines: string[] = [];
    for (const family of this.families.values()) {
      lines.push(`# HELP ${family.name} ${family.help || family.name}`);
      lines.push(`# TYPE ${family.name} ${family.kind}`);
      if (family.kind !== "histogram") {
        for (const [labels, cell] of family.values) {
          lines.push(`${family.name}${labels ? `{${labels}}` : ""} ${cell.value}`);
        }
        continue;
      }
      const buckets = family.buckets ?? latencyBuckets;
      for (const [labels, histogram] of family.histograms) {
        const prefix = labels ? `${labels},` : "";
        let cumulative = 0;
        buckets.forEach((bound, index) => {
          cumulative += histogram.counts[index] ?? 0;
          lines.push(`${family.name}_bucket{${prefix}le="${bound}"} ${cumulative}`);
        });
        lines.push(`${family.name}_bucket{${prefix}le="+Inf"} ${histogram.count}`);
        const suffix = labels ? `{${labels}}` : "";
        lines.push(`${family.name}_sum${suffix} ${histogram.sum}`);
        lines.push(`${family.name}_count${suffix} ${histogram.count}`);
      }
    }
    return `${lines.join("\n")}\n`;
  }
}

function record(buckets: readonly number[], histogram: Histogram, value: number): void {
  let index = 0;
  while (index < buckets.length && value > (buckets[index] ?? Number.POSITIVE_INFINITY)) index++;
  if (index < buckets.length) histogram.counts[index] = (histogram.counts[index] ?? 0) + 1;
  histogram.sum += value;
  histogram.count += 1;
}
