import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControlClient, controlClient, ControlServer, controlRequest, inProcessTransport, isUnknownCommand, wireName } from "../src/control.ts";
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

describe("wire names of API methods", () => {
  test.each([
    ["status", "status"],
    ["devices", "devices"],
    ["natAdd", "nat.add"],
    ["natFlush", "nat.flush"],
    ["uplinkStatus", "uplink.status"],
    ["wifiConfigure", "wifi.configure"],
    ["apStart", "ap.start"],
  ])("%s → %s", (method, wire) => {
    expect(wireName(method)).toBe(wire);
  });
});

describe("an API object served on the socket, and its typed client", () => {
  interface PetApi {
    status(): { role: string };
    petAdd(req: { name: string; legs?: number }): Promise<{ id: number; name: string; legs: number }>;
    petList(): { id: number; name: string }[];
    petFail(req?: { usage?: boolean }): never;
  }
  function petApi(): PetApi {
    const pets: { id: number; name: string; legs: number }[] = [];
    return {
      status: () => ({ role: "pet" }),
      async petAdd(req) {
        if (typeof req?.name !== "string") throw new UsageError("petAdd: name must be a string");
        const p = { id: pets.length + 1, name: req.name, legs: req.legs ?? 4 };
        pets.push(p);
        return p;
      },
      petList: () => pets.map(({ id, name }) => ({ id, name })),
      petFail(req) {
        if (req?.usage) throw new UsageError("you asked for it");
        throw new RuntimeError("it broke");
      },
    };
  }

  test("each method under its wire name; the request is the one argument; results come back typed", async () => {
    server.serve(petApi(), "pet");
    const client = controlClient<PetApi>(server.path);
    expect(await client.call("petAdd", { name: "rex" })).toEqual({ id: 1, name: "rex", legs: 4 });
    expect(await client.call("petAdd", { name: "tweety", legs: 2 })).toEqual({ id: 2, name: "tweety", legs: 2 });
    const list: { id: number; name: string }[] = await client.call("petList");
    expect(list).toEqual([{ id: 1, name: "rex" }, { id: 2, name: "tweety" }]);
    // The same wire request a client written by hand (or another program) sends.
    expect(await controlRequest(server.path, "pet.list")).toEqual(list);
    // Handlers registered by hand live beside the API's methods.
    expect(await controlRequest(server.path, "echo", { a: 1 })).toEqual({ a: 1 });
  });

  test("errors keep their kind; an unknown command names the role and what it knows", async () => {
    server.serve(petApi(), "pet");
    const client = controlClient<PetApi>(server.path);
    await expect(client.call("petFail", { usage: true })).rejects.toBeInstanceOf(UsageError);
    await expect(client.call("petFail")).rejects.toBeInstanceOf(RuntimeError);
    await expect(client.call("petAdd", { name: 7 } as never)).rejects.toThrow("petAdd: name must be a string");
    const e = await controlRequest(server.path, "pet.walk").catch((x: Error) => x);
    expect((e as Error).message).toBe('unknown command "pet.walk"; this pet daemon knows boom, echo, pet.add, pet.fail, pet.list, status');
    expect(isUnknownCommand(e, "pet.walk")).toBe(true);
    expect(isUnknownCommand(e, "pet.list")).toBe(false);
  });

  test("in process, the client gets what the socket would carry (JSON both ways)", async () => {
    const local = new ControlServer(join(dir, "never-started.sock"), log);
    local.serve(petApi(), "pet");
    const client = new ControlClient<PetApi>(inProcessTransport(local));
    expect(await client.call("petAdd", { name: "rex" })).toEqual({ id: 1, name: "rex", legs: 4 });
    expect(await client.call("petList")).toEqual([{ id: 1, name: "rex" }]);
    // A Date becomes its ISO string, as over the socket.
    local.handle("when", () => ({ at: new Date(0) }));
    expect(await new ControlClient<{ when(): { at: string } }>(inProcessTransport(local)).call("when")).toEqual({ at: "1970-01-01T00:00:00.000Z" });
    await expect(client.call("petFail")).rejects.toThrow("it broke");
    expect(existsSync(local.path)).toBe(false);
  });
});
