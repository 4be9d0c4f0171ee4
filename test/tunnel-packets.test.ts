// Packet tunnels end to end in one process: composeMaster / composeOnsite and a relay (src/roles)
// over real TLS on 127.0.0.1, with the in-memory tunnel hosts (src/tunnel/packet/memory.ts)
// standing in for TUN/TAP devices. Packets both ways, switching routed → bridged → routed in one
// session, the refusals, and the cleanup of both ends on disconnect, TTL and a side that dies.
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { UsageError } from "../src/errors.ts";
import type { SessionView } from "../src/tunnel/master-forwarder.ts";
import type { MemoryPacketDevice } from "../src/tunnel/packet/memory.ts";
import { Trio, packet, tagOf, type TrioOptions } from "./helpers/tunnel-trio.ts";
import { waitFor } from "./helpers/wait.ts";

setDefaultTimeout(20_000);

let trio: Trio | null = null;
afterEach(async () => {
  await trio?.close();
  trio = null;
});

const ENABLED: TrioOptions = { onsite: { tunnel: { enabled: true, bridged: true } } };

async function start(o: TrioOptions = ENABLED): Promise<Trio> {
  trio = await Trio.start(o);
  return trio;
}

async function connect(t: Trio, mode: "routed" | "bridged", extra: Record<string, unknown> = {}): Promise<SessionView> {
  return t.masterApi.call("connect", { onsite: "site-1", forwards: [], tunnel: mode, ...extra });
}

/** The session's tunnel, as `agent sessions` shows it, once its packet stream is up. */
async function up(t: Trio, id: string): Promise<NonNullable<SessionView["tunnel"]>> {
  let v: SessionView | undefined;
  await waitFor(async () => {
    v = (await t.masterApi.call("sessions")).find((s) => s.session === id);
    return v?.tunnel?.state === "up";
  }, 5_000, "the tunnel to be up");
  return v!.tunnel!;
}

/** Sends `n` packets from one device into the tunnel; resolves with the tags the other wrote. */
async function cross(from: MemoryPacketDevice, to: MemoryPacketDevice, n: number, size: number, base: number): Promise<number[]> {
  to.take();
  for (let i = 0; i < n; i++) expect(from.inject(packet(size, base + i))).toBe(true);
  await waitFor(() => to.written.length >= n, 5_000, `${n} packets across`);
  return to.take().map(tagOf);
}

const openDevices = (t: Trio) => ({ master: t.masterHost.open_.map((e) => e.device), onsite: t.onsiteHost.open_.map((e) => e.device) });

describe("a routed tunnel through a real relay", () => {
  test("packets cross both ways; sessions shows mode, interfaces, addresses, routes, packets and bytes each way", async () => {
    const t = await start();
    const s = await connect(t, "routed");
    expect(s.forwards).toEqual([]);
    const tun = await up(t, s.session);
    expect(tun).toMatchObject({
      mode: "routed",
      addressing: { master: "10.99.0.1/30", onsite: "10.99.0.2/30" },
      subnets: ["192.168.1.0/24"],
      master: { addresses: ["10.99.0.1/30"], routes: ["192.168.1.0/24"] },
      onsite: { addresses: ["10.99.0.2/30"] },
    });
    const { master, onsite } = openDevices(t);
    expect(master.length).toBe(1);
    expect(onsite.length).toBe(1);
    expect(tun.master!.iface).toBe(master[0]!.name);
    expect(tun.onsite!.iface).toBe(onsite[0]!.name);
    // The onsite device was asked for the master's addressing and a routed end.
    expect(t.onsiteHost.ends[0]!.req).toEqual({ session: s.session, mode: "routed", addressing: { master: "10.99.0.1/30", onsite: "10.99.0.2/30" } });
    expect(t.masterHost.ends[0]!.req).toMatchObject({ session: s.session, mode: "routed", subnets: ["192.168.1.0/24"] });

    expect(await cross(master[0]!, onsite[0]!, 200, 1420, 0)).toEqual([...Array(200).keys()]);
    expect(await cross(onsite[0]!, master[0]!, 100, 600, 5000)).toEqual([...Array(100).keys()].map((i) => 5000 + i));

    const after = await up(t, s.session);
    expect(after.packets).toMatchObject({ packets_out: 200, bytes_out: 200 * 1420, packets_in: 100, bytes_in: 100 * 600 });
    expect(Object.values(after.packets.drops).every((n) => n === 0)).toBe(true);
    // The relay's view of the same session counts what it carried each way.
    const rel = t.relayRole.server.sessionList().find((x) => x.session === s.session)!.tunnel!.relay!;
    expect(rel.to_onsite.packets_out).toBe(200);
    expect(rel.to_master.packets_out).toBe(100);
    // And the onsite device's own `agent sessions`.
    const onsiteView = (await t.onsiteApi.call("sessions"))[0]!;
    expect(onsiteView.tunnel).toMatchObject({ mode: "routed", onsite: { iface: onsite[0]!.name }, packets: { packets_in: 200, packets_out: 100 } });
  });

  test("forwards and a tunnel share one session; a second routed session gets the next /30", async () => {
    const t = await start();
    const a = await t.masterApi.call("connect", { onsite: "site-1", forwards: ["0:192.168.1.50:80"], tunnel: "routed" });
    const b = await connect(t, "routed");
    expect(a.forwards.map((f) => f.target)).toEqual(["192.168.1.50:80"]);
    expect((await up(t, a.session)).addressing).toEqual({ master: "10.99.0.1/30", onsite: "10.99.0.2/30" });
    expect((await up(t, b.session)).addressing).toEqual({ master: "10.99.0.5/30", onsite: "10.99.0.6/30" });
    expect(t.relayRole.server.sessionList().find((x) => x.session === a.session)!.targets).toEqual(["192.168.1.50:80"]);
  });
});

describe("switching modes in one session", () => {
  test("routed → bridged → routed: the ends and the packet stream are replaced, the session and its counts stay", async () => {
    const t = await start();
    const s = await connect(t, "routed");
    await up(t, s.session);
    let d = openDevices(t);
    await cross(d.master[0]!, d.onsite[0]!, 10, 1420, 0);

    const bridged = await t.masterApi.call("tunnelMode", { session: s.session, mode: "bridged" });
    expect(bridged.session).toBe(s.session);
    const b = await up(t, s.session);
    expect(b).toMatchObject({ mode: "bridged", onsite: { bridge: "br-lan" }, master: { bridge: "agt-br-eth1" } });
    d = openDevices(t);
    expect(d.master.map((x) => x.mode)).toEqual(["bridged"]);
    expect(d.onsite.map((x) => x.mode)).toEqual(["bridged"]);
    expect(t.masterHost.ends[0]!.closed && t.onsiteHost.ends[0]!.closed).toBe(true);
    // Ethernet frames of a full 1500-byte MTU plus their header cross.
    expect(await cross(d.master[0]!, d.onsite[0]!, 20, 1514, 100)).toEqual([...Array(20).keys()].map((i) => 100 + i));
    expect(await cross(d.onsite[0]!, d.master[0]!, 5, 60, 200)).toEqual([200, 201, 202, 203, 204]);

    await t.masterApi.call("tunnelMode", { session: s.session, mode: "routed" });
    const r = await up(t, s.session);
    expect(r).toMatchObject({ mode: "routed", addressing: { master: "10.99.0.1/30", onsite: "10.99.0.2/30" }, subnets: ["192.168.1.0/24"] });
    d = openDevices(t);
    expect(d.master.map((x) => x.mode)).toEqual(["routed"]);
    expect(d.onsite.map((x) => x.mode)).toEqual(["routed"]);
    expect(await cross(d.master[0]!, d.onsite[0]!, 10, 1420, 300)).toEqual([...Array(10).keys()].map((i) => 300 + i));
    // One session all along, and the counts are the whole session's.
    expect((await t.masterApi.call("sessions")).map((x) => x.session)).toEqual([s.session]);
    const end = await up(t, s.session);
    expect(end.packets.packets_out).toBe(40);
    expect(end.packets.packets_in).toBe(5);
    expect(t.onsiteHost.ends.length).toBe(3);
  });
});

async function refusal(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a refusal");
}

describe("refusals", () => {
  test("an onsite device without [tunnel] enabled = true refuses, naming the key; nothing is left open", async () => {
    const t = await start({});
    const e = await refusal(connect(t, "routed"));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toContain("site-1: packet tunnels are off on this device; set [tunnel] enabled = true in its config to allow them");
    expect(t.onsiteHost.ends).toEqual([]);
    expect(t.masterHost.ends).toEqual([]);
    expect(await t.masterApi.call("sessions")).toEqual([]);
  });

  test("bridged without [tunnel] bridged = true is refused at connect and at a switch; the routed tunnel stays up", async () => {
    const t = await start({ onsite: { tunnel: { enabled: true } } });
    const e = await refusal(connect(t, "bridged"));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toContain("set [tunnel] bridged = true in its config");
    const s = await connect(t, "routed");
    await up(t, s.session);
    const e2 = await refusal(t.masterApi.call("tunnelMode", { session: s.session, mode: "bridged" }));
    expect(e2).toBeInstanceOf(UsageError);
    expect(e2.message).toContain("set [tunnel] bridged = true in its config");
    const tun = await up(t, s.session);
    expect(tun.mode).toBe("routed");
    const d = openDevices(t);
    expect(await cross(d.master[0]!, d.onsite[0]!, 3, 100, 0)).toEqual([0, 1, 2]);
  });

  test("bridged asked from the secondary interface is refused with why; the session it opened is ended", async () => {
    const t = await start({ ...ENABLED, masterHost: { secondarySubnet: "192.168.77.0/24" } });
    const e = await refusal(connect(t, "bridged", { requester: "192.168.77.20" }));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toContain("comes from 192.168.77.20, on eth1 itself");
    await waitFor(() => t.onsiteHost.open_.length === 0, 3_000, "the onsite end to be closed");
    expect(t.relayRole.server.sessionList()).toEqual([]);
    // From elsewhere it is fine.
    const s = await connect(t, "bridged", { requester: "203.0.113.5" });
    expect((await up(t, s.session)).mode).toBe("bridged");
  });

  test("hostile or missing modes are usage errors naming the value", async () => {
    const t = await start();
    const e = await refusal(t.masterApi.call("connect", { onsite: "site-1", forwards: [], tunnel: "l2; rm -rf /" }));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toBe('--tunnel: expected routed or bridged, got "l2; rm -rf /"');
    const s = await connect(t, "routed");
    expect((await refusal(t.masterApi.call("tunnelMode", { session: s.session, mode: "L3" }))).message).toBe('tunnel mode: expected routed or bridged, got "L3"');
    expect((await refusal(t.masterApi.call("tunnelMode", { session: "s-nope1", mode: "bridged" }))).message).toContain('no session "s-nope1"');
    const plain = await t.masterApi.call("connect", { onsite: "site-1", forwards: ["0:192.168.1.50:80"] });
    expect((await refusal(t.masterApi.call("tunnelMode", { session: plain.session, mode: "bridged" }))).message).toContain("has no tunnel");
  });
});

describe("cleanup: both ends go when the session ends", () => {
  test("disconnect", async () => {
    const t = await start();
    const s = await connect(t, "routed");
    await up(t, s.session);
    await t.masterApi.call("disconnect", { session: s.session });
    await waitFor(() => t.onsiteHost.open_.length === 0 && t.masterHost.open_.length === 0, 5_000, "both ends closed");
  });

  test("TTL", async () => {
    const t = await start();
    const s = await connect(t, "bridged", { ttl: 1_000 });
    await up(t, s.session);
    await waitFor(() => t.onsiteHost.open_.length === 0 && t.masterHost.open_.length === 0, 5_000, "both ends closed at the TTL");
    expect((await t.masterApi.call("sessions"))[0]!.state).toBe("closed");
  });

  test("the master dies: the onsite end goes at once", async () => {
    const t = await start();
    const s = await connect(t, "routed");
    await up(t, s.session);
    await t.master.close();
    expect(t.masterHost.open_).toEqual([]);
    await waitFor(() => t.onsiteHost.open_.length === 0, 5_000, "the onsite end closed");
  });

  test("the onsite device dies: its end goes; the master's waits for the session to resume, and packets flow again", async () => {
    const t = await start();
    const s = await connect(t, "routed");
    await up(t, s.session);
    await t.onsite.close();
    expect(t.onsiteHost.open_).toEqual([]);
    await waitFor(async () => (await t.masterApi.call("sessions"))[0]!.state === "resuming", 5_000, "the session to resume");
    const masterDev = t.masterHost.open_[0]!.device;
    await t.startOnsite(ENABLED);
    await up(t, s.session);
    expect(t.masterHost.open_[0]!.device).toBe(masterDev); // the laptop side never went down
    expect(await cross(masterDev, t.onsiteHost.open_[0]!.device, 5, 100, 0)).toEqual([0, 1, 2, 3, 4]);
  });

  test("the relay goes: the onsite end goes; closing the master removes its end too", async () => {
    const t = await start();
    const s = await connect(t, "routed");
    await up(t, s.session);
    await t.relay.close();
    await waitFor(() => t.onsiteHost.open_.length === 0, 5_000, "the onsite end closed");
    await t.master.close();
    expect(t.masterHost.open_).toEqual([]);
  });
});
