// A tunnel end's host (test/fixtures/tunnel/host-end.ts) running in a namespace, and the
// joint that copies packets between two of them: the stand-in for the wire in host tests.
import { join, resolve } from "node:path";
import { nsArgv } from "./netns.ts";
import { waitFor } from "./wait.ts";

const ROOT = resolve(import.meta.dir, "..", "..");
const FIXTURE = join(ROOT, "test", "fixtures", "tunnel", "host-end.ts");
const BUN = join(ROOT, "node_modules", ".bin", "bun");

export interface EndSpec {
  role: "onsite" | "master";
  sweep?: boolean;
  opts: Record<string, unknown>;
  req?: Record<string, unknown>;
}

export class HostEnd {
  readonly proc: Bun.Subprocess<"pipe", "pipe", "pipe">;
  readonly ctl: Record<string, unknown>[] = [];
  private err = "";
  /** Where this end's packets go (set by join). */
  peer: HostEnd | undefined;

  constructor(
    readonly name: string,
    ns: string,
    spec: EndSpec,
  ) {
    this.proc = Bun.spawn(nsArgv(ns, BUN, FIXTURE, JSON.stringify(spec)), { cwd: ROOT, stdin: "pipe", stdout: "pipe", stderr: "pipe" }) as Bun.Subprocess<"pipe", "pipe", "pipe">;
    void this.readErr();
    void this.readOut();
  }

  private async readErr(): Promise<void> {
    const dec = new TextDecoder();
    let pending = "";
    for await (const c of this.proc.stderr) {
      pending += dec.decode(c, { stream: true });
      let i: number;
      while ((i = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, i);
        pending = pending.slice(i + 1);
        if (line.startsWith("CTL ")) this.ctl.push(JSON.parse(line.slice(4)));
        else this.err = (this.err + line + "\n").slice(-4000);
      }
    }
  }

  private async readOut(): Promise<void> {
    try {
      for await (const c of this.proc.stdout) {
        const p = this.peer;
        if (p && p.proc.exitCode === null) {
          try {
            p.proc.stdin.write(c);
            void p.proc.stdin.flush();
          } catch {
            // the peer went away: its packets are lost, as on a cut wire
          }
        }
      }
    } catch {
      // our process ended
    }
  }

  /** The first control line with key `k` (waits for it; fails fast if the process exits). */
  async waitCtl(k: string, ms = 15_000): Promise<Record<string, unknown>> {
    return waitFor(
      () => {
        const hit = this.ctl.find((c) => k in c);
        if (hit) return hit;
        if (this.proc.exitCode !== null) {
          const other = this.ctl.find((c) => "refused" in c || "error" in c);
          throw new Error(`${this.name} exited ${this.proc.exitCode} before "${k}": ${JSON.stringify(other)} ${this.err}`);
        }
        return undefined;
      },
      ms,
      () => `${this.name}: control line "${k}" (${JSON.stringify(this.ctl)}; stderr: ${this.err})`,
      { abort: () => (this.proc.exitCode !== null && !this.ctl.some((c) => k in c) ? new Error(`${this.name} exited ${this.proc.exitCode}: ${JSON.stringify(this.ctl)} ${this.err}`) : undefined) },
    );
  }

  /** SIGTERM: the end closes what it made and exits 0. */
  async close(): Promise<number> {
    if (this.proc.exitCode === null) this.proc.kill("SIGTERM");
    return this.proc.exited;
  }

  /** kill -9: nothing gets closed. */
  async kill9(): Promise<void> {
    if (this.proc.exitCode === null) this.proc.kill("SIGKILL");
    await this.proc.exited;
  }

  get stderr(): string {
    return this.err;
  }
}

/** Copies packets both ways between two ends. */
export function joinEnds(a: HostEnd, b: HostEnd): void {
  a.peer = b;
  b.peer = a;
}

/** Runs an end that must be refused; returns its refusal line. */
export async function refusal(name: string, ns: string, spec: EndSpec): Promise<{ refused: string; message: string }> {
  const e = new HostEnd(name, ns, spec);
  const code = await e.proc.exited;
  await waitFor(() => e.ctl.length > 0 || undefined, 2_000, `${name}: a control line`).catch(() => undefined);
  const r = e.ctl.find((c) => "refused" in c);
  if (code !== 3 || !r) throw new Error(`${name}: expected a refusal, got exit ${code}: ${JSON.stringify(e.ctl)} ${e.stderr}`);
  return r as { refused: string; message: string };
}

/** Runs a sweep in namespace `ns`; returns what it removed. */
export async function sweepIn(ns: string, spec: EndSpec): Promise<string[]> {
  const e = new HostEnd(`${spec.role} sweep`, ns, { ...spec, sweep: true });
  const code = await e.proc.exited;
  await waitFor(() => e.ctl.length > 0 || undefined, 2_000, "the sweep's report").catch(() => undefined);
  const line = e.ctl.find((c) => "swept" in c);
  if (code !== 0 || !line) throw new Error(`sweep in ${ns} exited ${code}: ${JSON.stringify(e.ctl)} ${e.stderr}`);
  return line.swept as string[];
}
