import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControlServer, controlRequest } from "../src/control.ts";
import { RuntimeError, UsageError } from "../src/errors.ts";
import { createLogger } from "../src/log.ts";

const log = createLogger({ level: "silent", write: () => {} });
let dir: string;
let server: ControlServer;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "agent-control-"));
  server = new ControlServer(join(dir, "sub", "control.sock"), log);
  server.handle("echo", (a) => a);
  server.handle("boom", () => {
    throw new UsageError("bad thing");
  });
  await server.start();
});
afterEach(() => {
  server.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("control socket", () => {
  test("answers, owner-only, removed on close", async () => {
    expect(await controlRequest(server.path, "echo", { a: 1 })).toEqual({ a: 1 });
    expect(statSync(server.path).mode & 0o777).toBe(0o600);
    server.close();
    expect(existsSync(server.path)).toBe(false);
    server.close(); // idempotent
  });
  test("an answer bigger than the socket takes at once arrives whole (a device list of thousands)", async () => {
    server.handle("big", () => "x".repeat(3 * 1024 * 1024));
    const got = (await controlRequest(server.path, "big")) as string;
    expect(got.length).toBe(3 * 1024 * 1024);
  });
  test("handler errors keep their kind", async () => {
    await expect(controlRequest(server.path, "boom")).rejects.toBeInstanceOf(UsageError);
    await expect(controlRequest(server.path, "nope")).rejects.toThrow('unknown command "nope"');
  });
  test("malformed requests get an error, not a hang", async () => {
    for (const line of ["{", "[]", '{"cmd":1}', '{"cmd":"echo","args":[1]}']) {
      const res = await server.dispatch(line);
      expect(res.ok).toBe(false);
      expect(res.error).toBeString();
    }
  });
  test("a second server on a live socket is refused; a stale file is replaced", async () => {
    const other = new ControlServer(server.path, log);
    await expect(other.start()).rejects.toBeInstanceOf(RuntimeError);
    server.close();
    await Bun.write(server.path, ""); // a stale leftover that nothing listens on
    const again = new ControlServer(server.path, log);
    again.handle("echo", (a) => a);
    await again.start();
    expect(await controlRequest(server.path, "echo", { b: 2 })).toEqual({ b: 2 });
    again.close();
  });
  test("missing socket: clear runtime error", async () => {
    await expect(controlRequest(join(dir, "none.sock"), "status")).rejects.toThrow("no daemon control socket");
  });
});
