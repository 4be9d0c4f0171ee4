// The uplink topology as network namespaces, reusable by any test or benchmark:
//
//   LAN ns ── onsite ns ──(uplink i veth)── router i ns ──(veth)── relay ns (RELAY_ADDR on lo)
//                          i = 1..n, each router NATs (MASQUERADE) towards the relay
//
// Every name carries the caller's prefix (namespaces "<p>-on", "<p>-r1", …; interfaces
// "<p>eth0", …) so parallel tests never collide. `teardown()` deletes everything it made,
// also after a half-built setup, and is safe to call twice. Nothing touches the root namespace
// except creating and deleting these namespaces.

export interface UplinkSpec {
  /** Interface name in the onsite namespace (prefixed by the caller, ≤ 15 chars). */
  dev: string;
  /** Create the link now (false: a test creates it later, e.g. a fake modem's connect). */
  create?: boolean;
}

export interface Topology {
  prefix: string;
  onsite: string;
  lan: string;
  relay: string;
  routers: string[];
  /** Address the relay answers on, reachable through every uplink. */
  relayAddr: string;
  /** LAN client address; its default route goes through onsite. */
  lanAddr: string;
  uplinks: { dev: string; routerDev: string; router: string; addr: string; gateway: string; routerRelaySide: string }[];
  /** Runs a command in a namespace; throws with stderr on failure unless `tolerate`. */
  ns(name: string, argv: string[], tolerate?: boolean): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Creates (or re-creates) uplink i's veth pair with its addresses (1-based). */
  createUplinkLink(i: number): Promise<void>;
  /** Link down/up on the onsite side (a cut cable). */
  setLink(i: number, up: boolean): Promise<void>;
  /** Drops forwarded traffic to the relay at router i (link stays up): a black hole. */
  blackhole(i: number, on: boolean): Promise<void>;
  /** Random loss at router i, both directions (iptables statistic; no netem here). */
  loss(i: number, probability: number | undefined): Promise<void>;
  teardown(): Promise<void>;
}

export const RELAY_ADDR = "10.99.0.1";

/** Runs a command (argv, no shell); throws with its stderr on failure unless `tolerate`. */
export async function sh(argv: string[], tolerate = false) {
  const p = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0 && !tolerate) throw new Error(`${argv.join(" ")}: exit ${code}: ${stderr.trim()}`);
  return { code, stdout, stderr };
}
export const inNs = (ns: string, argv: string[], tolerate = false) => sh(["ip", "netns", "exec", ns, ...argv], tolerate);

/** Builds the topology. `uplinks` are in order: uplink 1 is usually the primary. */
export async function buildUplinkTopology(prefix: string, uplinks: UplinkSpec[]): Promise<Topology> {
  const onsite = `${prefix}-on`;
  const lan = `${prefix}-lan`;
  const relay = `${prefix}-rl`;
  const routers = uplinks.map((_, i) => `${prefix}-r${i + 1}`);
  const all = [onsite, lan, relay, ...routers];
  const ns = (name: string, argv: string[], tolerate = false) => sh(["ip", "netns", "exec", name, ...argv], tolerate);
  const info = uplinks.map((u, k) => {
    const i = k + 1;
    return { dev: u.dev, routerDev: `${prefix}u${i}`, router: routers[k]!, addr: `10.91.${i}.2`, gateway: `10.91.${i}.1`, routerRelaySide: `10.92.${i}.2` };
  });
  const teardown = async () => {
    // Deleting a namespace deletes its interfaces, routes, rules and iptables state.
    for (const n of all) await sh(["ip", "netns", "del", n], true);
  };
  const topo: Topology = {
    prefix,
    onsite,
    lan,
    relay,
    routers,
    relayAddr: RELAY_ADDR,
    lanAddr: "192.168.77.2",
    uplinks: info,
    ns,
    async createUplinkLink(i) {
      const u = info[i - 1]!;
      await ns(onsite, ["ip", "link", "del", u.dev], true);
      await ns(onsite, ["ip", "link", "add", u.dev, "type", "veth", "peer", "name", u.routerDev, "netns", u.router]);
      await ns(onsite, ["ip", "addr", "add", `${u.addr}/24`, "dev", u.dev]);
      await ns(u.router, ["ip", "addr", "add", `${u.gateway}/24`, "dev", u.routerDev]);
      await ns(u.router, ["ip", "link", "set", u.routerDev, "up"]);
      await ns(onsite, ["ip", "link", "set", u.dev, "up"]);
      // LAN traffic leaves onsite NATed to whichever uplink carries it.
      await ns(onsite, ["iptables", "-t", "nat", "-C", "POSTROUTING", "-o", u.dev, "-j", "MASQUERADE"], true).then((r) =>
        r.code === 0 ? undefined : ns(onsite, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", u.dev, "-j", "MASQUERADE"]),
      );
    },
    async setLink(i, up) {
      await ns(onsite, ["ip", "link", "set", info[i - 1]!.dev, up ? "up" : "down"]);
    },
    async blackhole(i, on) {
      const u = info[i - 1]!;
      await ns(u.router, ["iptables", on ? "-I" : "-D", "FORWARD", "-d", RELAY_ADDR, "-j", "DROP"], !on);
    },
    async loss(i, probability) {
      const u = info[i - 1]!;
      await ns(u.router, ["iptables", "-F", "FORWARD"]);
      if (probability === undefined) return;
      await ns(u.router, ["iptables", "-A", "FORWARD", "-m", "statistic", "--mode", "random", "--probability", String(probability), "-j", "DROP"]);
    },
    teardown,
  };
  try {
    for (const n of all) {
      await sh(["ip", "netns", "del", n], true); // leftovers of a killed run
      await sh(["ip", "netns", "add", n]);
      await ns(n, ["ip", "link", "set", "lo", "up"]);
    }
    // The relay: an address on its loopback, one veth per router.
    await ns(relay, ["ip", "addr", "add", `${RELAY_ADDR}/32`, "dev", "lo"]);
    for (const [k, u] of info.entries()) {
      const i = k + 1;
      await ns(u.router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
      await ns(u.router, ["ip", "link", "add", `${prefix}x${i}`, "type", "veth", "peer", "name", `${prefix}y${i}`, "netns", relay]);
      await ns(u.router, ["ip", "addr", "add", `${u.routerRelaySide}/24`, "dev", `${prefix}x${i}`]);
      await ns(u.router, ["ip", "link", "set", `${prefix}x${i}`, "up"]);
      await ns(relay, ["ip", "addr", "add", `10.92.${i}.1/24`, "dev", `${prefix}y${i}`]);
      await ns(relay, ["ip", "link", "set", `${prefix}y${i}`, "up"]);
      await ns(u.router, ["ip", "route", "add", `${RELAY_ADDR}/32`, "via", `10.92.${i}.1`]);
      await ns(u.router, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", `${prefix}x${i}`, "-j", "MASQUERADE"]);
      if (uplinks[k]!.create !== false) await topo.createUplinkLink(i);
    }
    // The LAN behind onsite.
    await ns(onsite, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    await ns(onsite, ["ip", "link", "add", `${prefix}lan1`, "type", "veth", "peer", "name", `${prefix}lan0`, "netns", lan]);
    await ns(onsite, ["ip", "addr", "add", "192.168.77.1/24", "dev", `${prefix}lan1`]);
    await ns(onsite, ["ip", "link", "set", `${prefix}lan1`, "up"]);
    await ns(lan, ["ip", "addr", "add", "192.168.77.2/24", "dev", `${prefix}lan0`]);
    await ns(lan, ["ip", "link", "set", `${prefix}lan0`, "up"]);
    await ns(lan, ["ip", "route", "add", "default", "via", "192.168.77.1"]);
  } catch (e) {
    await teardown();
    throw e;
  }
  return topo;
}

/** A TCP listener in the relay namespace that answers each connection with the peer's address and closes. */
export function startPeerEcho(topo: Topology, port: number): { proc: ReturnType<typeof Bun.spawn>; ready: Promise<void>; stop(): Promise<void> } {
  const script = `
    Bun.listen({ hostname: ${JSON.stringify(RELAY_ADDR)}, port: ${port}, socket: {
      open(s) { s.end(s.remoteAddress + "\\n"); }, data() {} } });
    console.log("ready");`;
  const proc = Bun.spawn(["ip", "netns", "exec", topo.relay, process.execPath, "-e", script], { stdout: "pipe", stderr: "inherit", stdin: "ignore" });
  const ready = (async () => {
    const reader = proc.stdout.getReader();
    const { value } = await reader.read();
    reader.releaseLock();
    if (!value || !new TextDecoder().decode(value).includes("ready")) throw new Error("peer echo in the relay namespace did not start");
  })();
  return {
    proc,
    ready,
    async stop() {
      proc.kill();
      await proc.exited;
    },
  };
}
