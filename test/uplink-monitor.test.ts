// Both link monitors (netlink over bun:ffi, and the polling fallback) run in a namespace the
// test creates and must report the same links, carrier changes, addresses and gateways.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { BUN } from "./helpers/cli.ts";
import { snapshotsDiffer, linkUsable } from "../src/uplink/monitor.ts";
import type { LinkInfo } from "../src/uplink/netlink.ts";
import { createNamespace, deleteNamespace, inNs, nsArgv, nsName } from "./helpers/netns.ts";
import { waitFor } from "./helpers/wait.ts";

const isRoot = process.getuid?.() === 0;
if (!isRoot && process.env.CI) throw new Error("link monitor tests need root; CI runs as root, so this must not be skipped there");
const NS = nsName("up-mon");

const ns = (argv: string[], tolerate = false) => inNs(NS, argv, tolerate);

(isRoot ? describe.each(["netlink", "poll"]) : describe.skip.each(["netlink", "poll"]))("%s link monitor (needs root)", (kind) => {
  let proc: ReturnType<typeof Bun.spawn> | undefined;
  const snaps: LinkInfo[][] = [];

  beforeAll(async () => {
    await createNamespace(NS);
    await ns(["ip", "link", "add", "upm0", "type", "veth", "peer", "name", "upm1"]);
    proc = Bun.spawn(nsArgv(NS, BUN, join(import.meta.dir, "fixtures/uplink/monitor-run.ts"), kind, "upm"), { stdout: "pipe", stderr: "inherit" });
    void (async () => {
      let buf = "";
      for await (const c of proc!.stdout as ReadableStream<Uint8Array>) {
        buf += new TextDecoder().decode(c);
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          snaps.push(JSON.parse(buf.slice(0, nl)));
          buf = buf.slice(nl + 1);
        }
      }
    })();
  });

  afterAll(async () => {
    proc?.kill();
    await proc?.exited;
    await deleteNamespace(NS);
  });

  const until = (cond: (s: LinkInfo[]) => boolean, what: string) =>
    waitFor(() => (snaps.length && cond(snaps.at(-1)!) ? snaps.at(-1)! : undefined), 5000, `the ${kind} monitor to report ${what}`, { detail: () => `last: ${JSON.stringify(snaps.at(-1))}` });
  const get = (s: LinkInfo[], n: string) => s.find((l) => l.name === n);

  test("sees links appear with carrier, address and gateway", async () => {
    await until((s) => get(s, "upm0")?.up === false, "upm0 present and down");
    await ns(["ip", "addr", "add", "10.61.0.2/24", "dev", "upm0"]);
    await ns(["ip", "link", "set", "upm1", "up"]);
    await ns(["ip", "link", "set", "upm0", "up"]);
    await ns(["ip", "route", "add", "default", "via", "10.61.0.1", "dev", "upm0"]);
    const s = await until((s) => get(s, "upm0")?.gateways.length === 1 && get(s, "upm0")!.carrier, "upm0 usable with its gateway");
    expect(get(s, "upm0")).toEqual({ name: "upm0", up: true, carrier: true, addrs: ["10.61.0.2/24"], gateways: ["10.61.0.1"] } as LinkInfo);
    expect(linkUsable(get(s, "upm0") as LinkInfo)).toBe(true);
  });

  test("sees the peer's carrier go (link down on the far end)", async () => {
    await ns(["ip", "link", "set", "upm1", "down"]);
    const s = await until((s) => get(s, "upm0")?.carrier === false, "loss of carrier");
    expect(get(s, "upm0")!.up).toBe(true); // admin up, but no carrier: not usable
    expect(linkUsable(get(s, "upm0") as LinkInfo)).toBe(false);
  });

  test("sees an address removed and the link deleted", async () => {
    await ns(["ip", "addr", "del", "10.61.0.2/24", "dev", "upm0"]);
    await until((s) => get(s, "upm0")?.addrs.length === 0, "address gone");
    await ns(["ip", "link", "del", "upm0"]);
    await until((s) => get(s, "upm0") === undefined && get(s, "upm1") === undefined, "links deleted");
  });
});

test("snapshotsDiffer looks only at what the manager uses", () => {
  const l: LinkInfo = { name: "a", index: 2, up: true, carrier: true, addrs: ["10.0.0.2/24"], gateways: [] };
  const m = (x: LinkInfo) => new Map([[x.name, x]]);
  expect(snapshotsDiffer(m(l), m({ ...l }))).toBe(false);
  expect(snapshotsDiffer(m(l), m({ ...l, carrier: false }))).toBe(true);
  expect(snapshotsDiffer(m(l), m({ ...l, addrs: [] }))).toBe(true);
  expect(snapshotsDiffer(m(l), m({ ...l, gateways: ["10.0.0.1"] }))).toBe(true);
  expect(snapshotsDiffer(m(l), new Map())).toBe(true);
});
