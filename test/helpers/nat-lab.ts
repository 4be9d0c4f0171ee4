// Shared pieces of the NAT system tests (test/nat-system.test.ts, test/nat-session.test.ts)
// and the NAT benchmark: the router topology,
// running commands (optionally inside a namespace), reading a namespace's firewall as the
// backend's own tool prints it, the rule tags in it, and the LAN fixture server.
import { join } from "node:path";
import type { Subprocess } from "bun";
import { BUN, ROOT } from "./cli.ts";

export type NatBackendName = "iptables" | "nft";

export async function run(argv: string[], stdin?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn(argv, { stdin: stdin === undefined ? "ignore" : new TextEncoder().encode(stdin), stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

/** Runs and returns stdout; throws with stderr when the command fails. */
export async function must(argv: string[], stdin?: string): Promise<string> {
  const r = await run(argv, stdin);
  if (r.code !== 0) throw new Error(`${argv.join(" ")} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

export const inNs = (ns: string, ...argv: string[]) => ["ip", "netns", "exec", ns, ...argv];

/**
 * The NAT test topology: a client namespace (the remote peer, with one or more addresses), a
 * router namespace with the public address and the LAN gateway (IP forwarding on), and a LAN
 * namespace with the server, routed via the router. Veths are named `${veth}-c`/`-rc` and
 * `-l`/`-rl`. Namespaces of an earlier crashed run are removed first.
 */
export interface RouterTopology {
  cli: string;
  rtr: string;
  lan: string;
  veth: string;
  clientAddrs: string[];
  publicAddr: string;
  routerLan: string;
  server: string;
}

export async function deleteNamespaces(names: readonly string[]): Promise<void> {
  for (const ns of names) await run(["ip", "netns", "del", ns]);
}

export async function buildRouterTopology(t: RouterTopology): Promise<void> {
  const { cli, rtr, lan, veth: v } = t;
  await deleteNamespaces([cli, rtr, lan]);
  for (const ns of [cli, rtr, lan]) {
    await must(["ip", "netns", "add", ns]);
    await must(inNs(ns, "ip", "link", "set", "lo", "up"));
  }
  await must(["ip", "link", "add", `${v}-c`, "netns", cli, "type", "veth", "peer", "name", `${v}-rc`, "netns", rtr]);
  await must(["ip", "link", "add", `${v}-l`, "netns", lan, "type", "veth", "peer", "name", `${v}-rl`, "netns", rtr]);
  for (const a of t.clientAddrs) await must(inNs(cli, "ip", "addr", "add", `${a}/24`, "dev", `${v}-c`));
  await must(inNs(rtr, "ip", "addr", "add", `${t.publicAddr}/24`, "dev", `${v}-rc`));
  await must(inNs(rtr, "ip", "addr", "add", `${t.routerLan}/24`, "dev", `${v}-rl`));
  await must(inNs(lan, "ip", "addr", "add", `${t.server}/24`, "dev", `${v}-l`));
  for (const [ns, dev] of [[cli, `${v}-c`], [rtr, `${v}-rc`], [rtr, `${v}-rl`], [lan, `${v}-l`]] as const) await must(inNs(ns, "ip", "link", "set", dev, "up"));
  await must(inNs(lan, "ip", "route", "add", "default", "via", t.routerLan));
  await must(inNs(rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1"));
}

/** A namespace's rules as the backend's own tool shows them (counters blanked), for tags and for "nothing changed". */
export async function rulesetOf(ns: string, backend: NatBackendName): Promise<string> {
  if (backend === "nft") return (await must(inNs(ns, "nft", "list", "ruleset"))).replace(/counter packets \d+ bytes \d+/g, "counter");
  const save = await must(inNs(ns, "iptables-save"));
  return save.split("\n").filter((l) => !l.startsWith("#")).join("\n").replace(/\[\d+:\d+\]/g, "");
}

/** The rule ids in the agent's tags (`agent-nat id=…`), one per firewall rule carrying it. */
export function tagsIn(text: string): string[] {
  return [...text.matchAll(/agent-nat id=([0-9a-f]{8})/g)].map((m) => m[1]!);
}

/** Starts test/fixtures/nat/lan-server.ts (HTTP "lan-ok", TCP and UDP echo) in `ns`; resolves once it listens. */
export async function startLanServer(ns: string, httpPort: number, echoPort: number): Promise<Subprocess<"ignore", "pipe", "inherit">> {
  const server = Bun.spawn(inNs(ns, BUN, join(ROOT, "test/fixtures/nat/lan-server.ts"), String(httpPort), String(echoPort)), { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
  const first = await server.stdout.getReader().read();
  const text = new TextDecoder().decode(first.value);
  if (!text.includes("ready")) throw new Error(`the LAN server in ${ns} did not start: ${JSON.stringify(text)}`);
  return server;
}
