// Our path for the transport benchmark, as a user runs it (DESIGN.md's CLI contract): a
// throwaway PKI, relay, onsite and master as real processes on 127.0.0.1, and one
// `agent connect site-1 --forward ...` per target. Any step that fails (for instance while
// `agent connect` does not exist yet) throws an error that says which step and why; the
// benchmark prints that as "not available: <reason>" instead of figures.
import { join } from "node:path";
import { BUN, MAIN as OWN_MAIN, ROOT } from "../../test/helpers/cli.ts";
import { Children, freePort, nofileArgv, run, waitForListen, type Child } from "../../test/helpers/proc.ts";
import { startOrClean, type Path } from "./path.ts";
import { inScratch } from "./scratch.ts";

/** The program under test: this checkout's src/main.ts, or BENCH_AGENT_MAIN (another checkout). */
export const MAIN = process.env.BENCH_AGENT_MAIN || OWN_MAIN;
const START_MS = 20_000;
const CLI_MS = 30_000;
/** The relay of the idle-capacity benchmark holds thousands of sockets. */
export const RELAY_NOFILE = 65_536;

export const ONSITE_ID = "site-1";
export const MASTER_ID = "tech-1";
export const RELAY_ID = "relay-1";

function lastLine(text: string): string {
  return text.trim().split("\n").slice(-1)[0] ?? "";
}

/** `agent ARGS` to completion; a non-zero exit becomes an error naming the step. */
export async function agentCli(step: string, args: string[], main = MAIN): Promise<string> {
  const r = await run([BUN, main, ...args], { cwd: ROOT, timeoutMs: CLI_MS });
  if (r.code !== 0) {
    const why = (r.stderr.trim() || r.stdout.trim()).split("\n")[0] ?? "";
    throw new Error(`${step}: \`agent ${args.join(" ")}\` exit ${r.code}: ${why}`);
  }
  return r.stdout;
}

/** argv that runs `agent` with as many open files as we may give it (see proc.nofileArgv). */
export function agentArgv(args: string[], nofile = RELAY_NOFILE, main = MAIN): string[] {
  return nofileArgv([BUN, main, ...args], nofile);
}

export interface Fleet {
  dir: string;
  relayPort: number;
  relay: Child;
  onsite: Child;
  master: Child;
  sockets: { relay: string; onsite: string; master: string };
  bundles: { relay: string; onsite: string; master: string };
  kids: Children;
  stop(): Promise<void>;
}

/** Throwaway PKI, then relay, onsite and master daemons; resolves once the master lists site-1. */
export async function startFleet(opts: { logLevel?: string; main?: string } = {}): Promise<Fleet> {
  const main = opts.main ?? MAIN;
  return inScratch("agent-bench-ours-", async ({ kids, dir, stop }) => {
    const pki = join(dir, "pki");
    await agentCli("pki init", ["pki", "init", "--dir", pki]);
    const bundles = { relay: join(dir, "relay.bundle"), onsite: join(dir, "onsite.bundle"), master: join(dir, "master.bundle") };
    await agentCli("pki issue relay", ["pki", "issue", "--dir", pki, "--role", "relay", "--id", RELAY_ID, "--host", "127.0.0.1", "--out", bundles.relay]);
    await agentCli("pki issue onsite", ["pki", "issue", "--dir", pki, "--role", "onsite", "--id", ONSITE_ID, "--out", bundles.onsite]);
    await agentCli("pki issue master", ["pki", "issue", "--dir", pki, "--role", "master", "--id", MASTER_ID, "--out", bundles.master]);
    const sockets = { relay: join(dir, "relay.sock"), onsite: join(dir, "onsite.sock"), master: join(dir, "master.sock") };
    const common = (role: keyof typeof sockets) => ["--control", sockets[role], "--state-dir", join(dir, `${role}-state`), "--log-level", opts.logLevel ?? "warn"];
    const relayPort = await freePort();
    const relay = kids.spawn("agent relay", agentArgv(["--role", "relay", "--bundle", bundles.relay, "--listen", `127.0.0.1:${relayPort}`, ...common("relay")], RELAY_NOFILE, main), { cwd: ROOT });
    await waitForListen(relayPort, START_MS, relay, { owned: true }).catch((e: Error) => {
      const state = relay.running ? `still running after ${START_MS} ms` : "exited";
      throw new Error(`relay never listened on 127.0.0.1:${relayPort} (${state}): ${lastLine(relay.output()) || "no output"}`, { cause: e });
    });
    const relayAddr = `127.0.0.1:${relayPort}`;
    const onsite = kids.spawn("agent onsite", [BUN, main, "--role", "onsite", "--bundle", bundles.onsite, "--relay", relayAddr, "--allow", "127.0.0.1/32", ...common("onsite")], { cwd: ROOT });
    const master = kids.spawn("agent master", [BUN, main, "--role", "master", "--bundle", bundles.master, "--relay", relayAddr, ...common("master")], { cwd: ROOT });
    // The onsite device is usable once the master's relay lists it.
    const until = Date.now() + START_MS;
    let last = "";
    for (;;) {
      for (const c of [relay, onsite, master]) if (!c.running) throw new Error(`${c.name} exited: ${lastLine(c.output()) || "no output"}`);
      try {
        last = await agentCli("devices", ["devices", "--json", "--control", sockets.master], main);
        if (last.includes(`"${ONSITE_ID}"`)) break;
      } catch (e) {
        last = (e as Error).message;
      }
      if (Date.now() > until) throw new Error(`master never listed ${ONSITE_ID} within ${START_MS} ms; last: ${last.slice(0, 300)}`);
      await Bun.sleep(100);
    }
    return { dir, relayPort, relay, onsite, master, sockets, bundles, kids, stop };
  });
}

/** What `agent connect --json` prints (the part we use). */
interface SessionJson {
  session: string;
  forwards: { bind: string; port: number; target: string }[];
}

/** Our relay path: a fleet, then one session with a forward per target through the master.
 * `main` picks the checkout (an A/B against an earlier commit runs both in one benchmark). */
export async function startOursPath(targets: readonly number[], main = MAIN): Promise<Path> {
  if (!(await Bun.file(main).exists())) throw new Error(`${main} is missing`);
  const fleet = await startFleet({ main });
  return startOrClean(async () => {
    const lports = await Promise.all(targets.map(() => freePort()));
    const out = await agentCli("connect", [
      "connect", ONSITE_ID, ...targets.flatMap((t, i) => ["--forward", `127.0.0.1:${lports[i]}:127.0.0.1:${t}`]), "--control", fleet.sockets.master, "--json",
    ], main);
    let s: SessionJson;
    try {
      s = JSON.parse(out) as SessionJson;
    } catch (cause) {
      throw new Error(`connect --json printed no JSON: ${out.slice(0, 200)}`, { cause });
    }
    const entries = targets.map((t) => s.forwards?.find((f) => f.target === `127.0.0.1:${t}`)?.port);
    if (entries.some((p) => !p)) throw new Error(`connect --json has no forward for every target: ${out.slice(0, 300)}`);
    for (const p of entries) await waitForListen(p!, START_MS, fleet.master, { owned: true });
    return {
      name: "ours (master→relay→onsite)",
      entries: entries as number[],
      relayPids: [fleet.relay.pid],
      pathPids: [fleet.master.pid, fleet.relay.pid, fleet.onsite.pid],
      notes: `agent (${main === OWN_MAIN ? "this checkout" : main}) under Bun ${Bun.version}: relay, onsite, master processes; TLS 1.3 mutual auth; session ${s.session}`,
      stop: fleet.stop,
      [Symbol.asyncDispose]: fleet.stop,
    } satisfies Path;
  }, fleet.stop);
}
