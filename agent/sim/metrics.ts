/** Prometheus histogram with fixed buckets, rendered the way prometheus_client does. */
export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: readonly number[],
  ) {
    this.counts = new Array<number>(buckets.length).fill(0);
  }

  /** Records `value` (seconds or tokens) `times` times. */
  observe(value: number, times = 1): void {
    if (times <= 0) return;
    this.sum += value * times;
    this.count += times;
    const buckets = this.buckets;
    for (let i = 0; i < buckets.length; i++) {
      if (value <= (buckets[i] as number)) {
        this.counts[i] = (this.counts[i] as number) + times;
        return;
      }
    }
  }

  render(labels: string): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    let cumulative = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      cumulative += this.counts[i] as number;
      lines.push(
        `${this.name}_bucket{${labels},le="${num(this.buckets[i] as number)}"} ${num(cumulative)}`,
      );
    }
    lines.push(`${this.name}_bucket{${labels},le="+Inf"} ${num(this.count)}`);
    lines.push(`${this.name}_count{${labels}} ${num(this.count)}`);
    lines.push(`${this.name}_sum{${labels}} ${num(this.sum)}`);
    return lines.join("\n");
  }
}

/** prometheus_client prints floats Python-style: `3.0`, `0.25`, `1e-05`. */
export function num(value: number): string {
  if (Number.isInteger(value)) return `${value}.0`;
  return String(value);
}

export function gauge(
  name: string,
  help: string,
  type: "gauge" | "counter",
  samples: string[],
): string {
  return [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...samples].join("\n");
}

export const TTFT_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
  40.0, 80.0, 160.0, 640.0, 2560.0,
];
export const ITL_BUCKETS = [
  0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
  40.0, 80.0,
];
export const REQUEST_LATENCY_BUCKETS = [
  0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
  480.0, 960.0, 1920.0, 7680.0,
];

/** vLLM's 1-2-5 buckets up to max_model_len, for token-count histograms. */
export function tokenBuckets(maxModelLen: number): number[] {
  const out: number[] = [];
  for (let exponent = 1; ; exponent *= 10) {
    for (const mantissa of [1, 2, 5]) {
      const value = mantissa * exponent;
      if (value > maxModelLen) return out;
      out.push(value);
    }
  }
}
