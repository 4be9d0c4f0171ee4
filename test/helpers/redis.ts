// A real redis-server for the cluster tests (issue 16): on a free port of 127.0.0.1, in a temp
// dir, nothing saved to disk, stopped by its pid. `kill()` is kill -9 (Redis gone at once),
// `start()` again brings it back on the same port, empty.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RedisClient } from "bun";
import { freePort, programsPresent, spawnChild, type Child } from "./proc.ts";
import { waitFor } from "./wait.ts";

/** True when redis-server is installed; false (with a warning) to skip, or a throw in CI. */
export function redisPresent(file: string): boolean {
  return programsPresent(file, ["redis-server"]);
}

export class TestRedis {
  readonly dir = mkdtempSync(join(tmpdir(), "agent-redis-"));
  private child: Child | null = null;
  private constructor(readonly port: number, private readonly password?: string) {}

  static async create(opts: { password?: string } = {}): Promise<TestRedis> {
    const r = new TestRedis(await freePort(), opts.password);
    await r.start();
    return r;
  }

  get url(): string {
    return `redis://${this.password ? `:${this.password}@` : ""}127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.child?.running ?? false;
  }

  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  async start(): Promise<void> {
    const argv = ["redis-server", "--port", String(this.port), "--bind", "127.0.0.1", "--dir", this.dir, "--save", "", "--appendonly", "no", "--protected-mode", "no"];
    if (this.password) argv.push("--requirepass", this.password);
    this.child = spawnChild("redis-server", argv);
    await waitFor(async () => {
      if (!this.child!.running) throw this.child!.failure("redis-server exited");
      const c = new RedisClient(this.url, { autoReconnect: false, enableOfflineQueue: false, connectionTimeout: 500 });
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
    const c = new RedisClient(this.url, { autoReconnect: false, enableOfflineQueue: false });
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
