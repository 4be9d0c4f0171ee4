// Prometheus metrics: a registry of counters, gauges and histograms, and a pure renderer of the
// text exposition format (version 0.0.4, what `promtool check metrics` reads). A `Metrics`
// handle is injected like the log: each module registers the families it owns (names, help,
// labels) and keeps the handles. Registering the same name again with the same shape returns
// the same family, so two parts that both count one thing share it; another shape throws.
//
// Cardinality is bounded by construction: every label is declared with the values it may take
// (a reason code set, "in"/"out", a role) and a value outside them is counted as "other". No
// per-device label exists. Declared combinations start at 0, so a scrape shows every series
// before the first event, and a rate() over a fresh counter is not missing data.
//
// A family may also be read at scrape time (`collect`): a live count the code already keeps
// (connections, sessions, NAT rules) is read where it is, not mirrored into a gauge.
export type MetricType = "counter" | "gauge" | "histogram";
export type Labels = Readonly<Record<string, string>>;
/** Each label's allowed values. */
export type LabelSpec = Readonly<Record<string, readonly string[]>>;

/** The value a label takes when given one it was not declared with. */
export const OTHER = "other";

export interface Sample {
  /** Appended to the family name: "_bucket", "_sum", "_count" (histograms), else "". */
  suffix?: string;
  labels: Labels;
  value: number;
}

/** One family as the renderer sees it. */
export interface FamilySnapshot {
  name: string;
  help: string;
  type: MetricType;
  samples: Sample[];
}

export interface Counter {
  inc(labels?: Labels, by?: number): void;
}
export interface Gauge {
  set(value: number, labels?: Labels): void;
  inc(labels?: Labels, by?: number): void;
  dec(labels?: Labels, by?: number): void;
}
export interface Histogram {
  /** `value` in the family's base unit (seconds, bytes). */
  observe(value: number, labels?: Labels): void;
}

export interface Metrics {
  counter(name: string, help: string, labels?: LabelSpec): Counter;
  gauge(name: string, help: string, labels?: LabelSpec): Gauge;
  histogram(name: string, help: string, buckets: readonly number[], labels?: LabelSpec): Histogram;
  /** A family whose samples are read when scraped; `read` returns a number (no labels) or samples. */
  collect(name: string, help: string, type: "counter" | "gauge", read: () => number | Sample[], labels?: LabelSpec): void;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Buckets for durations of network handshakes, in seconds. */
export const HANDSHAKE_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;

interface Family {
  name: string;
  help: string;
  type: MetricType;
  spec: LabelSpec;
  shape: string;
  snapshot(): Sample[];
}

/** Every combination of the declared label values, in declaration order. */
function combinations(spec: LabelSpec): Labels[] {
  let out: Record<string, string>[] = [{}];
  for (const [k, values] of Object.entries(spec)) out = out.flatMap((l) => values.map((v) => ({ ...l, [k]: v })));
  return out;
}

class Series {
  /** Label key (values joined in declaration order) → value. */
  readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly spec: LabelSpec) {
    for (const l of combinations(spec)) this.values.set(this.key(l), { labels: l, value: 0 });
  }
  /** The labels as declared: unknown values become OTHER; a missing or extra label throws (a bug). */
  bound(labels: Labels = {}): Labels {
    const names = Object.keys(this.spec);
    const given = Object.keys(labels);
    if (given.length !== names.length || given.some((g) => !(g in this.spec))) throw new Error(`metric labels ${JSON.stringify(given)} do not match the declared ${JSON.stringify(names)}`);
    const out: Record<string, string> = {};
    for (const n of names) out[n] = this.spec[n]!.includes(labels[n]!) ? labels[n]! : OTHER;
    return out;
  }
  key(labels: Labels): string {
    return Object.keys(this.spec).map((n) => labels[n]).join("\u0000");
  }
  add(labels: Labels | undefined, by: number, set = false): void {
    const l = this.bound(labels);
    const k = this.key(l);
    const cur = this.values.get(k);
    if (cur) cur.value = set ? by : cur.value + by;
    else this.values.set(k, { labels: l, value: by });
  }
}

function checkNames(name: string, type: MetricType | "collect-counter", spec: LabelSpec): void {
  if (!NAME.test(name)) throw new Error(`metric name ${JSON.stringify(name)} is not valid (letters, digits, _ and :)`);
  if ((type === "counter" || type === "collect-counter") && !name.endsWith("_total")) throw new Error(`counter ${name} must end in _total`);
  for (const l of Object.keys(spec)) {
    if (!LABEL.test(l) || l.startsWith("__") || l === "le") throw new Error(`label name ${JSON.stringify(l)} of ${name} is not valid`);
  }
}

export class Registry implements Metrics {
  private readonly families = new Map<string, Family>();

  private register(f: Family): Family {
    const have = this.families.get(f.name);
    if (have) {
      if (have.shape !== f.shape) throw new Error(`metric ${f.name} is registered twice with different shapes (${have.shape} vs ${f.shape})`);
      return have;
    }
    this.families.set(f.name, f);
    return f;
  }

  counter(name: string, help: string, labels: LabelSpec = {}): Counter {
    checkNames(name, "counter", labels);
    const series = new Series(labels);
    const f = this.register({ name, help, type: "counter", spec: labels, shape: `counter ${JSON.stringify(labels)}`, snapshot: () => [...series.values.values()].map((v) => ({ labels: v.labels, value: v.value })) }) as Family & { series?: Series };
    f.series ??= series;
    const s = f.series;
    return {
      inc: (l, by = 1) => {
        if (!(by >= 0)) throw new Error(`counter ${name} can only go up (inc by ${by})`);
        s.add(l, by);
      },
    };
  }

  gauge(name: string, help: string, labels: LabelSpec = {}): Gauge {
    checkNames(name, "gauge", labels);
    const series = new Series(labels);
    const f = this.register({ name, help, type: "gauge", spec: labels, shape: `gauge ${JSON.stringify(labels)}`, snapshot: () => [...series.values.values()].map((v) => ({ labels: v.labels, value: v.value })) }) as Family & { series?: Series };
    f.series ??= series;
    const s = f.series;
    return {
      set: (v, l) => s.add(l, v, true),
      inc: (l, by = 1) => s.add(l, by),
      dec: (l, by = 1) => s.add(l, -by),
    };
  }

  histogram(name: string, help: string, buckets: readonly number[], labels: LabelSpec = {}): Histogram {
    checkNames(name, "histogram", labels);
    const bounds = [...buckets].sort((a, b) => a - b);
    if (bounds.length === 0 || bounds.some((b) => !Number.isFinite(b)) || new Set(bounds).size !== bounds.length) throw new Error(`histogram ${name} needs distinct finite buckets`);
    const series = new Series(labels);
    type H = { counts: number[]; sum: number; count: number };
    const hs = new Map<string, { labels: Labels; h: H }>();
    const fresh = (): H => ({ counts: bounds.map(() => 0), sum: 0, count: 0 });
    for (const l of combinations(labels)) hs.set(series.key(l), { labels: l, h: fresh() });
    const snapshot = (): Sample[] => {
      const out: Sample[] = [];
      for (const { labels: l, h } of hs.values()) {
        bounds.forEach((b, i) => out.push({ suffix: "_bucket", labels: { ...l, le: formatValue(b) }, value: h.counts[i]! }));
        out.push({ suffix: "_bucket", labels: { ...l, le: "+Inf" }, value: h.count });
        out.push({ suffix: "_sum", labels: l, value: h.sum });
        out.push({ suffix: "_count", labels: l, value: h.count });
      }
      return out;
    };
    const f = this.register({ name, help, type: "histogram", spec: labels, shape: `histogram ${JSON.stringify(labels)} ${bounds.join(",")}`, snapshot }) as Family & { observe?: Histogram["observe"] };
    f.observe ??= (value, l) => {
      const b = series.bound(l);
      const k = series.key(b);
      let e = hs.get(k);
      if (!e) hs.set(k, (e = { labels: b, h: fresh() }));
      // Cumulative buckets: each bound counts every observation at or below it.
      bounds.forEach((bound, i) => {
        if (value <= bound) e!.h.counts[i]!++;
      });
      e.h.sum += value;
      e.h.count++;
    };
    return { observe: f.observe };
  }

  collect(name: string, help: string, type: "counter" | "gauge", read: () => number | Sample[], labels: LabelSpec = {}): void {
    checkNames(name, type === "counter" ? "collect-counter" : "gauge", labels);
    const series = new Series(labels);
    this.register({
      name,
      help,
      type,
      spec: labels,
      shape: `collect ${type} ${JSON.stringify(labels)}`,
      snapshot: () => {
        const v = read();
        if (typeof v === "number") return [{ labels: {}, value: v }];
        return v.map((s) => ({ labels: series.bound(s.labels), value: s.value }));
      },
    });
  }

  /** Every family, sorted by name. A collector that throws is left out of this scrape. */
  snapshot(): FamilySnapshot[] {
    const out: FamilySnapshot[] = [];
    for (const f of [...this.families.values()].sort((a, b) => (a.name < b.name ? -1 : 1))) {
      let samples: Sample[];
      try {
        samples = f.snapshot();
      } catch {
        continue;
      }
      out.push({ name: f.name, help: f.help, type: f.type, samples });
    }
    return out;
  }

  /** The text exposition of everything registered. */
  render(): string {
    return renderExposition(this.snapshot());
  }
}

/** A number as the text format writes it: integers plainly, +Inf, -Inf, NaN. Pure. */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

const escapeHelp = (s: string) => s.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
const escapeLabel = (s: string) => s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");

/** The Prometheus text exposition format (0.0.4) of these families. Pure. */
export function renderExposition(families: readonly FamilySnapshot[]): string {
  let out = "";
  for (const f of families) {
    out += `# HELP ${f.name} ${escapeHelp(f.help)}\n# TYPE ${f.name} ${f.type}\n`;
    for (const s of f.samples) {
      const labels = Object.entries(s.labels);
      const text = labels.length ? `{${labels.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}` : "";
      out += `${f.name}${s.suffix ?? ""}${text} ${formatValue(s.value)}\n`;
    }
  }
  return out;
}

/** The content type of the text format. */
export const EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export interface MetricsServer {
  readonly port: number;
  stop(): void;
}

/**
 * Serves GET /metrics from `registry` on hostname:port (port 0: any). Anything else is 404;
 * the listener serves nothing but the scrape, so it needs no authentication beyond where it
 * listens (default advice: 127.0.0.1, or a management network).
 */
export function serveMetrics(hostname: string, port: number, registry: Registry): MetricsServer {
  const server = Bun.serve({
    hostname,
    port,
    fetch(req) {
      const url = new URL(req.url);
      if (url.pathname !== "/metrics") return new Response("not found: the metrics are at /metrics\n", { status: 404 });
      if (req.method !== "GET" && req.method !== "HEAD") return new Response("GET /metrics\n", { status: 405, headers: { allow: "GET, HEAD" } });
      return new Response(registry.render(), { headers: { "content-type": EXPOSITION_CONTENT_TYPE } });
    },
  });
  return { port: server.port ?? port, stop: () => void server.stop(true) };
}
