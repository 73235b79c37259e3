// Prometheus text exposition (format 0.0.4) for both apps: counters and gauges with labels. Small on
// purpose: prom-client pulls Node-only modules, and the edge must run on Workers.

type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  const keys = Object.keys(labels).sort();
  if (keys.length === 0) return "";
  const esc = (v: string) => v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
  return `{${keys.map((k) => `${k}="${esc(labels[k])}"`).join(",")}}`;
}

interface Family {
  help: string;
  type: "counter" | "gauge";
  values: Map<string, number>;
  /** Gauges read at scrape time. */
  read?: () => number;
}

export class Metrics {
  readonly #families = new Map<string, Family>();

  #family(name: string, type: Family["type"], help: string): Family {
    let f = this.#families.get(name);
    if (!f) {
      f = { help, type, values: new Map() };
      this.#families.set(name, f);
    }
    return f;
  }

  /** Declares a counter (so it is listed at 0 before the first event). */
  counter(name: string, help: string): void {
    this.#family(name, "counter", help);
  }

  inc(name: string, labels: Labels = {}, by = 1): void {
    const f = this.#family(name, "counter", name);
    const key = labelKey(labels);
    f.values.set(key, (f.values.get(key) ?? 0) + by);
  }

  set(name: string, value: number, labels: Labels = {}, help = name): void {
    this.#family(name, "gauge", help).values.set(labelKey(labels), value);
  }

  /** A gauge computed at scrape time (queue depth, memory). */
  gauge(name: string, help: string, read: () => number): void {
    this.#family(name, "gauge", help).read = read;
  }

  get(name: string, labels: Labels = {}): number {
    return this.#families.get(name)?.values.get(labelKey(labels)) ?? 0;
  }

  render(): string {
    const lines: string[] = [];
    for (const [name, f] of this.#families) {
      lines.push(`# HELP ${name} ${f.help}`, `# TYPE ${name} ${f.type}`);
      if (f.read) lines.push(`${name} ${f.read()}`);
      else if (f.values.size === 0 && f.type === "counter") lines.push(`${name} 0`);
      for (const [key, v] of f.values) lines.push(`${name}${key} ${v}`);
    }
    return `${lines.join("\n")}\n`;
  }
}

/** Error class for the requests_total counter: "ok", "4xx", "5xx". */
export function statusClass(status: number): string {
  return status < 400 ? "ok" : status < 500 ? "4xx" : "5xx";
}
