// A real redis-server for the cluster tests (issue 16): on a free port of 127.0.0.1, in a temp
// dir, nothing saved to disk, stopped by its pid. `kill()` is kill -9 (Redis gone at once),
// `start()` again brings it back on the same port, empty.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RedisClient } from "bun";
import { nsArgv } from "./netns.ts";
import { freePort, programsPresent, run, spawnChild, type Child } from "./proc.ts";
import { waitFor } from "./wait.ts";

/** True when redis-server is installed; false (with a warning) to skip, or a throw in CI. */
export function redisPresent(file: string): boolean {
  return programsPresent(file, ["redis-server"]);
}

export class TestRedis {
  readonly dir = mkdtempSync(join(tmpdir(), "agent-redis-"));
  private child: Child | null = null;
  /** With TLS: the CA (PEM file) that signed the server's certificate. */
  caFile: string | null = null;
  private constructor(readonly port: number, private readonly password?: string, private readonly tls = false, private readonly ns?: string) {}

  /**
   * `tls`: Redis speaks only TLS (tls-port), with a certificate for 127.0.0.1 from a CA made here.
   * `ns`: Redis runs in that network namespace (on its own 127.0.0.1, port 6379 unless `port`),
   * answered by redis-cli there; `client()` cannot reach it from the test's namespace.
   */
  static async create(opts: { password?: string; tls?: boolean; ns?: string; port?: number } = {}): Promise<TestRedis> {
    const r = new TestRedis(opts.port ?? (opts.ns ? 6379 : await freePort()), opts.password, opts.tls, opts.ns);
    if (opts.tls) await r.makeCertificates();
    await r.start();
    return r;
  }

  get url(): string {
    return `${this.tls ? "rediss" : "redis"}://${this.password ? `:${this.password}@` : ""}127.0.0.1:${this.port}`;
  }

  get ca(): string | null {
    return this.caFile ? readFileSync(this.caFile, "utf8") : null;
  }

  private async makeCertificates(): Promise<void> {
    const f = (n: string) => join(this.dir, n);
    const ok = async (argv: string[]) => {
      const r = await run(argv);
      if (r.code !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr}`);
    };
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    await ok(["openssl", "req", "-x509", ...ec, "-keyout", f("ca.key"), "-out", f("ca.pem"), "-days", "2", "-subj", "/CN=test Redis CA"]);
    await ok(["openssl", "req", ...ec, "-keyout", f("redis.key"), "-out", f("redis.csr"), "-subj", "/CN=127.0.0.1"]);
    writeFileSync(f("ext"), "subjectAltName=IP:127.0.0.1\n");
    await ok(["openssl", "x509", "-req", "-in", f("redis.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial", "-out", f("redis.pem"), "-days", "2", "-extfile", f("ext")]);
    this.caFile = f("ca.pem");
  }

  private options() {
    return { autoReconnect: false, enableOfflineQueue: false, connectionTimeout: 500, ...(this.caFile ? { tls: { ca: readFileSync(this.caFile, "utf8") } } : {}) };
  }

  get running(): boolean {
    return this.child?.running ?? false;
  }

  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  async start(): Promise<void> {
    const f = (n: string) => join(this.dir, n);
    const listen = this.tls ? ["--port", "0", "--tls-port", String(this.port), "--tls-cert-file", f("redis.pem"), "--tls-key-file", f("redis.key"), "--tls-ca-cert-file", f("ca.pem"), "--tls-auth-clients", "no"] : ["--port", String(this.port)];
    const argv = ["redis-server", ...listen, "--bind", "127.0.0.1", "--dir", this.dir, "--save", "", "--appendonly", "no", "--protected-mode", "no"];
    if (this.password) argv.push("--requirepass", this.password);
    this.child = spawnChild("redis-server", this.ns ? nsArgv(this.ns, ...argv) : argv);
    await waitFor(async () => {
      if (!this.child!.running) throw this.child!.failure("redis-server exited");
      if (this.ns) {
        const auth = this.password ? ["-a", this.password, "--no-auth-warning"] : [];
        const r = await run(nsArgv(this.ns, "redis-cli", "-h", "127.0.0.1", "-p", String(this.port), ...auth, "ping"));
        return r.stdout.trim() === "PONG";
      }
      const c = new RedisClient(this.url, this.options());
      try {
        await c.connect();
        return (await c.send("PING", [])) === "PONG";
      } catch {
        return false;
      } finally {
        c.close();
      }
    }, 10_000, "redis-server answering PING");
  }

  /** A client for the test itself (commands straight to Redis). */
  async client(): Promise<RedisClient> {
    const c = new RedisClient(this.url, this.options());
    await c.connect();
    return c;
  }

  /** kill -9: Redis is gone at once. */
  async kill(): Promise<void> {
    const c = this.child;
    if (!c || !c.running) return;
    process.kill(c.pid, "SIGKILL");
    await c.exited;
  }

  async close(): Promise<void> {
    await this.child?.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
