// Network namespaces for tests and benchmarks: the one namespace helper (names unique per
// run, run a command inside, create, delete with what runs inside) and, built on it, the
// uplink topology:
//
//   LAN ns ── onsite ns ──(uplink i veth)── router i ns ──(veth)── relay ns (RELAY_ADDR on lo)
//                          i = 1..n, each router NATs (MASQUERADE) towards the relay
//
// Every name carries the caller's prefix (namespaces "agt-<run>-<p>-on", "…-<p>-r1", …, see
// nsName; interfaces "<p>eth0", … inside them) so parallel tests and parallel runs never
// collide. `teardown()` deletes everything it made, also after a half-built setup, and is
// safe to call twice. Nothing touches the root namespace except creating and deleting these
// namespaces.
import { existsSync } from "node:fs";
import { run } from "./proc.ts";
import { waitFor, withDeadline } from "./wait.ts";

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

// ---------------------------------------------------------------- namespaces: the one helper

/**
 * This run's tag, in every namespace name a test makes: the test process's pid in base 36.
 * Two runs on one host (two worktrees, a benchmark beside the suite) then never share, and
 * never delete, each other's namespaces. scripts/leaks.sh finds the namespaces of runs that
 * have ended by it: `agt-<tag>-…` whose pid is gone.
 */
export const RUN_TAG = process.pid.toString(36);
export const NS_PREFIX = "agt-";
/** The name of this run's namespace `base`: `agt-<tag>-<base>`. Interfaces inside keep their short names. */
export const nsName = (base: string) => `${NS_PREFIX}${RUN_TAG}-${base}`;

/** Runs a command (argv, no shell) with a deadline; throws with its stderr on failure unless `tolerate`. */
export async function sh(argv: string[], tolerate = false, timeoutMs = 30_000) {
  const r = await run(argv, { timeoutMs });
  if (r.code !== 0 && !tolerate) throw new Error(`${argv.join(" ")}: exit ${r.code}: ${r.stderr.trim()}`);
  return r;
}
/** argv that runs `argv` inside namespace `ns` (for spawning, or for a runner of one's own). */
export const nsArgv = (ns: string, ...argv: string[]) => ["ip", "netns", "exec", ns, ...argv];
/** Runs `argv` inside namespace `ns`: sh() there. */
export const inNs = (ns: string, argv: string[], tolerate = false) => sh(nsArgv(ns, ...argv), tolerate);

export const namespaceExists = (name: string) => existsSync(`/run/netns/${name}`);

/** The pids running in namespace `name` (`ip netns pids`). */
export async function namespacePids(name: string): Promise<number[]> {
  const r = await sh(["ip", "netns", "pids", name], true);
  return r.stdout.split(/\s+/).filter(Boolean).map(Number).filter((n) => Number.isInteger(n) && n !== process.pid);
}

/**
 * Deletes namespace `name` and what runs in it. `ip netns del` alone only unmounts the name:
 * a daemon inside keeps the namespace (and its sockets, rules and ports) alive, unseen. So its
 * processes get SIGTERM, then SIGKILL after `graceMs`, and the call waits until they are gone.
 * Absent already: nothing to do. Throws when something could not be removed.
 */
export async function deleteNamespace(name: string, graceMs = 2_000): Promise<void> {
  if (!namespaceExists(name)) return;
  const signal = (pids: number[], sig: NodeJS.Signals) => {
    for (const pid of pids) {
      try {
        process.kill(pid, sig);
      } catch {
        // already gone
      }
    }
  };
  const gone = async () => (await namespacePids(name)).length === 0;
  const pids = await namespacePids(name);
  if (pids.length) {
    signal(pids, "SIGTERM");
    try {
      await waitFor(gone, graceMs, `the processes in namespace ${name} to end on SIGTERM`, { every: 50 });
    } catch {
      signal(await namespacePids(name), "SIGKILL");
      await waitFor(gone, 5_000, `the processes in namespace ${name} to end after SIGKILL`, { every: 50 });
    }
  }
  await sh(["ip", "netns", "del", name]);
}

/** Deletes every namespace named (see deleteNamespace); tries them all, then throws with every failure. */
export async function deleteNamespaces(names: readonly string[]): Promise<void> {
  const errors: string[] = [];
  for (const n of names) {
    try {
      await deleteNamespace(n);
    } catch (e) {
      errors.push(`${n}: ${(e as Error).message}`);
    }
  }
  if (errors.length) throw new Error(`could not delete namespace(s):\n${errors.join("\n")}`);
}

/** Creates namespace `name` with its loopback up (a leftover of the same name is deleted first). */
export async function createNamespace(name: string): Promise<void> {
  await deleteNamespace(name);
  await sh(["ip", "netns", "add", name]);
  await inNs(name, ["ip", "link", "set", "lo", "up"]);
}

// ---------------------------------------------------------------- the uplink topology

/** Builds the topology. `uplinks` are in order: uplink 1 is usually the primary. */
export async function buildUplinkTopology(prefix: string, uplinks: UplinkSpec[]): Promise<Topology> {
  const onsite = nsName(`${prefix}-on`);
  const lan = nsName(`${prefix}-lan`);
  const relay = nsName(`${prefix}-rl`);
  const routers = uplinks.map((_, i) => nsName(`${prefix}-r${i + 1}`));
  const all = [onsite, lan, relay, ...routers];
  const ns = inNs;
  const info = uplinks.map((u, k) => {
    const i = k + 1;
    return { dev: u.dev, routerDev: `${prefix}u${i}`, router: routers[k]!, addr: `10.91.${i}.2`, gateway: `10.91.${i}.1`, routerRelaySide: `10.92.${i}.2` };
  });
  // Deleting a namespace deletes its interfaces, routes, rules and iptables state; its
  // processes are ended first (deleteNamespace). Safe twice; throws what it could not remove.
  const teardown = () => deleteNamespaces(all);
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
    for (const n of all) await createNamespace(n);
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
    await teardown().catch((t) => console.error(`tearing down the half-built topology ${prefix}: ${(t as Error).message}`));
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
  const proc = Bun.spawn(nsArgv(topo.relay, process.execPath, "-e", script), { stdout: "pipe", stderr: "inherit", stdin: "ignore" });
  const ready = (async () => {
    const reader = proc.stdout.getReader();
    const { value } = await withDeadline(reader.read(), 15_000, "the peer echo in the relay namespace to say ready");
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
