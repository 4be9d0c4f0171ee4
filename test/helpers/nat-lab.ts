// Shared pieces of the NAT system tests (test/nat-system.test.ts, test/nat-session.test.ts)
// and the NAT benchmark: the router topology,
// running commands (optionally inside a namespace), reading a namespace's firewall as the
// backend's own tool prints it, the rule tags in it, and the LAN fixture server.
import { join } from "node:path";
import type { Subprocess } from "bun";
import { BUN, ROOT } from "./cli.ts";
import { createNamespace, deleteNamespaces, nsArgv } from "./netns.ts";
import { run as runProc } from "./proc.ts";
import { withDeadline } from "./wait.ts";

export type NatBackendName = "iptables" | "nft";

/** Runs a command with a deadline (default 30 s; proc.ts run, which kills it on timeout). */
export async function run(argv: string[], stdin?: string, timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return runProc(argv, { stdin, timeoutMs });
}

/** Runs and returns stdout; throws with stderr when the command fails. */
export async function must(argv: string[], stdin?: string): Promise<string> {
  const r = await run(argv, stdin);
  if (r.code !== 0) throw new Error(`${argv.join(" ")} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

export { deleteNamespaces, nsArgv };

/**
 * The NAT test topology: a client namespace (the remote peer, with one or more addresses), a
 * router namespace with the public address and the LAN gateway (IP forwarding on), and a LAN
 * namespace with the server, routed via the router. Veths are named `${veth}-c`/`-rc` and
 * `-l`/`-rl`. Tests name the namespaces with netns.ts's nsName (unique per run); a
 * namespace of the same name is deleted first.
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

export async function buildRouterTopology(t: RouterTopology): Promise<void> {
  const { cli, rtr, lan, veth: v } = t;
  for (const ns of [cli, rtr, lan]) await createNamespace(ns);
  await must(["ip", "link", "add", `${v}-c`, "netns", cli, "type", "veth", "peer", "name", `${v}-rc`, "netns", rtr]);
  await must(["ip", "link", "add", `${v}-l`, "netns", lan, "type", "veth", "peer", "name", `${v}-rl`, "netns", rtr]);
  for (const a of t.clientAddrs) await must(nsArgv(cli, "ip", "addr", "add", `${a}/24`, "dev", `${v}-c`));
  await must(nsArgv(rtr, "ip", "addr", "add", `${t.publicAddr}/24`, "dev", `${v}-rc`));
  await must(nsArgv(rtr, "ip", "addr", "add", `${t.routerLan}/24`, "dev", `${v}-rl`));
  await must(nsArgv(lan, "ip", "addr", "add", `${t.server}/24`, "dev", `${v}-l`));
  for (const [ns, dev] of [[cli, `${v}-c`], [rtr, `${v}-rc`], [rtr, `${v}-rl`], [lan, `${v}-l`]] as const) await must(nsArgv(ns, "ip", "link", "set", dev, "up"));
  await must(nsArgv(lan, "ip", "route", "add", "default", "via", t.routerLan));
  await must(nsArgv(rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1"));
}

/** A namespace's rules as the backend's own tool shows them (counters blanked), for tags and for "nothing changed". */
export async function rulesetOf(ns: string, backend: NatBackendName): Promise<string> {
  if (backend === "nft") return (await must(nsArgv(ns, "nft", "list", "ruleset"))).replace(/counter packets \d+ bytes \d+/g, "counter");
  const save = await must(nsArgv(ns, "iptables-save"));
  return save.split("\n").filter((l) => !l.startsWith("#")).join("\n").replace(/\[\d+:\d+\]/g, "");
}

/** The rule ids in the agent's tags (`agent-nat id=…`), one per firewall rule carrying it. */
export function tagsIn(text: string): string[] {
  return [...text.matchAll(/agent-nat id=([0-9a-f]{8})/g)].map((m) => m[1]!);
}

/** Starts test/fixtures/nat/lan-server.ts (HTTP "lan-ok", TCP and UDP echo) in `ns`; resolves once it listens. */
export async function startLanServer(ns: string, httpPort: number, echoPort: number): Promise<Subprocess<"ignore", "pipe", "inherit">> {
  const server = Bun.spawn(nsArgv(ns, BUN, join(ROOT, "test/fixtures/nat/lan-server.ts"), String(httpPort), String(echoPort)), { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
  const first = await withDeadline(server.stdout.getReader().read(), 15_000, `the LAN server in ${ns} to say ready`).catch((e: Error) => {
    server.kill("SIGKILL");
    throw e;
  });
  const text = new TextDecoder().decode(first.value);
  if (!text.includes("ready")) throw new Error(`the LAN server in ${ns} did not start: ${JSON.stringify(text)}`);
  return server;
}
