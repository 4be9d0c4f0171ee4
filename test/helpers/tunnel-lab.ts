// The packet-tunnel topology of issue 11, in namespaces this run owns:
//
//   laptop ns (lap0) ──veth── (eth1) master ns          onsite ns (br-lan ⊃ lan0, wan0) ──veth── (eth0) LAN ns
//                                 192.168.77.1/24          br-lan 192.168.1.2/24                  192.168.1.1/24 (+ 192.168.2.1/24 on lo)
//                                                          route 192.168.2.0/24 via .1.1          dnsmasq: the customer's DHCP server
//
// Without a relay the master and the onsite namespaces are not linked: host tests pipe the two
// devices' packets. With `relay: true` (system tests, the benchmark) a relay namespace sits
// between their uplinks, and neither routes to the other's networks except through a tunnel:
//
//   master (up0 10.200.1.2/24) ── (m0 10.200.1.1) relay ns, RELAY 10.200.0.1 on lo (o0 10.200.2.1) ── (up0 10.200.2.2/24) onsite
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { createNamespace, deleteNamespace, inNs, nsArgv, nsName } from "./netns.ts";
import { spawnChild, type Child } from "./proc.ts";
import { waitFor } from "./wait.ts";

export const MASTER_SECONDARY = "192.168.77.1/24";
export const ONSITE_LAN = "192.168.1.2/24";
export const LAN_ROUTER = "192.168.1.1";
/** A LAN subnet behind the router, outside an allow list of 192.168.1.0/24. */
export const FAR_HOST = "192.168.2.1";
/** The relay's address in a lab with a relay, reachable from the master's and the onsite uplinks. */
export const LAB_RELAY = "10.200.0.1";
export const UDHCPC_SCRIPT = join(import.meta.dir, "..", "fixtures", "wifi", "udhcpc.script");

export interface TunnelLab {
  /** The relay's namespace ("" without a relay). */
  relay: string;
  laptop: string;
  master: string;
  onsite: string;
  lan: string;
  dir: string;
  lanDhcp: Child;
  /** DHCP from the laptop on lap0: { ip, router } of the lease, or an error after `tries` seconds. */
  lease(tries?: number): Promise<{ ip: string; router: string }>;
  /** Drops the laptop's address and default route (before the next lease). */
  forgetLease(): Promise<void>;
  teardown(): Promise<void>;
}

export async function buildTunnelLab(prefix: string, o: { relay?: boolean } = {}): Promise<TunnelLab> {
  const relay = o.relay ? nsName(`${prefix}-rly`) : "";
  const laptop = nsName(`${prefix}-lap`);
  const master = nsName(`${prefix}-mst`);
  const onsite = nsName(`${prefix}-ons`);
  const lan = nsName(`${prefix}-lan`);
  const all = [laptop, master, onsite, lan, ...(relay ? [relay] : [])];
  const dir = mkdtempSync("/tmp/agent-tunlab-");
  let lanDhcp: Child | undefined;
  const teardown = async () => {
    await lanDhcp?.stop();
    for (const n of all) await deleteNamespace(n);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const n of all) await createNamespace(n);
    // laptop ⇄ master's secondary port
    await inNs(laptop, ["ip", "link", "add", "lap0", "type", "veth", "peer", "name", "eth1", "netns", master]);
    await inNs(laptop, ["ip", "link", "set", "lap0", "up"]);
    await inNs(master, ["ip", "addr", "add", MASTER_SECONDARY, "dev", "eth1"]);
    await inNs(master, ["ip", "link", "set", "eth1", "up"]);
    // onsite's LAN bridge ⇄ the customer's router
    await inNs(onsite, ["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", lan]);
    await inNs(onsite, ["ip", "link", "add", "br-lan", "type", "bridge"]);
    await inNs(onsite, ["ip", "link", "set", "lan0", "master", "br-lan", "up"]);
    await inNs(onsite, ["ip", "link", "set", "br-lan", "up"]);
    await inNs(onsite, ["ip", "addr", "add", ONSITE_LAN, "dev", "br-lan"]);
    await inNs(onsite, ["ip", "route", "add", "192.168.2.0/24", "via", LAN_ROUTER]);
    // An uplink stand-in (no dummy module on every kernel: a veth pair).
    await inNs(onsite, ["ip", "link", "add", "wan0", "type", "veth", "peer", "name", "wan1"]);
    await inNs(onsite, ["ip", "link", "set", "wan0", "up"]);
    await inNs(lan, ["ip", "addr", "add", `${LAN_ROUTER}/24`, "dev", "eth0"]);
    await inNs(lan, ["ip", "link", "set", "eth0", "up"]);
    await inNs(lan, ["ip", "addr", "add", `${FAR_HOST}/24`, "dev", "lo"]);
    if (relay) {
      await inNs(relay, ["ip", "addr", "add", `${LAB_RELAY}/32`, "dev", "lo"]);
      for (const [end, side, n] of [[master, "m0", 1], [onsite, "o0", 2]] as const) {
        await inNs(relay, ["ip", "link", "add", side, "type", "veth", "peer", "name", "up0", "netns", end]);
        await inNs(relay, ["ip", "addr", "add", `10.200.${n}.1/24`, "dev", side]);
        await inNs(relay, ["ip", "link", "set", side, "up"]);
        await inNs(end, ["ip", "addr", "add", `10.200.${n}.2/24`, "dev", "up0"]);
        await inNs(end, ["ip", "link", "set", "up0", "up"]);
        await inNs(end, ["ip", "route", "add", `${LAB_RELAY}/32`, "via", `10.200.${n}.1`]);
      }
    }
    lanDhcp = spawnChild(
      "LAN dnsmasq",
      nsArgv(lan, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--port=0", "--bind-interfaces", "--interface=eth0", "--except-interface=lo", "--pid-file=", `--dhcp-leasefile=${join(dir, "lan.leases")}`, "--dhcp-range=192.168.1.100,192.168.1.150,255.255.255.0,1h", `--dhcp-option=option:router,${LAN_ROUTER}`, "--dhcp-authoritative", "--user=root"),
    );
  } catch (e) {
    await teardown();
    throw e;
  }
  const out = join(dir, "udhcpc.out");
  return {
    relay,
    laptop,
    master,
    onsite,
    lan,
    dir,
    lanDhcp: lanDhcp!,
    async lease(tries = 10) {
      rmSync(out, { force: true });
      const r = await inNs(laptop, ["env", `UDHCPC_OUT=${out}`, "busybox", "udhcpc", "-i", "lap0", "-n", "-q", "-f", "-t", String(tries), "-T", "1", "-s", UDHCPC_SCRIPT], true);
      if (r.code !== 0) throw new Error(`no DHCP lease on the laptop: udhcpc exited ${r.code}: ${(r.stderr + r.stdout).trim().slice(-400)}`);
      const [ip, router] = readFileSync(out, "utf8").trim().split(" ");
      return { ip: ip!, router: router! };
    },
    async forgetLease() {
      await inNs(laptop, ["ip", "addr", "flush", "dev", "lap0"]);
      await inNs(laptop, ["ip", "neigh", "flush", "dev", "lap0"], true);
    },
    teardown,
  };
}

/** Pings once per try until one answer (or `ms` passes); true when answered. */
export async function pingable(ns: string, addr: string, ms = 5_000): Promise<boolean> {
  try {
    await waitFor(async () => (await inNs(ns, ["busybox", "ping", "-c", "1", "-W", "1", addr], true)).code === 0, ms, `ping ${addr} from ${ns}`, { every: 100 });
    return true;
  } catch {
    return false;
  }
}
