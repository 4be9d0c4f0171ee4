// The README's run command (`make demo`): a throwaway fleet on this machine, without root.
// Builds the agent executable for this machine, creates a CA and one bundle per role, starts
// relay, onsite and master on 127.0.0.1, starts a small HTTP service that stands for a LAN
// device behind the onsite device, opens a port forward to it through the relay, prints the
// URL to open, and runs until Ctrl-C; then stops every process it started and removes its
// temporary files. `--once` stops right after checking the forward (used by the test suite).
// The master also serves its web GUI (issue 15) on 127.0.0.1 with a throwaway user whose
// password is made here and printed with the URL.
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";

const ROOT = join(import.meta.dir, "..");
const MAIN = join(ROOT, "src", "main.ts");
const once = process.argv.includes("--once");
const dir = mkdtempSync(join(tmpdir(), "agent-demo-"));
const children: Subprocess[] = [];
const arch = process.arch === "arm64" ? "arm64" : "x64";
/** The executable under test; `bun src/main.ts` until the build step has made it. */
let AGENT: string[] = [process.execPath, MAIN];
let lanService: ReturnType<typeof Bun.serve> | undefined;

function say(line: string) {
  process.stdout.write(`demo: ${line}\n`);
}

async function agent(args: string[]): Promise<string> {
  const p = Bun.spawn([...AGENT, ...args], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`agent ${args.join(" ")} failed (${code}): ${err.trim()}`);
  return out;
}

/** The GUI's throwaway user: no default credentials, even in the demo. */
const GUI_USER = "demo";
const GUI_PASSWORD = crypto.getRandomValues(new Uint8Array(12)).reduce((s, b) => s + b.toString(36).padStart(2, "0"), "");

async function agentStdin(args: string[], input: string): Promise<string> {
  const p = Bun.spawn([...AGENT, ...args], { stdin: new Blob([input]), stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`agent ${args.join(" ")} failed (${code}): ${err.trim()}`);
  return out;
}

async function prefixLines(stream: ReadableStream<Uint8Array>, tag: string) {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of stream) {
    buf += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      process.stdout.write(`${tag.padEnd(7)}| ${buf.slice(0, nl)}\n`);
      buf = buf.slice(nl + 1);
    }
  }
}

async function cleanup() {
  lanService?.stop(true);
  for (const c of children) if (c.exitCode === null) c.kill("SIGTERM");
  await Promise.all(children.map((c) => c.exited));
  rmSync(dir, { recursive: true, force: true });
}

async function main() {
  say(`throwaway fleet in ${dir}`);
  say(`building the agent executable for linux-${arch} (bun build --compile)`);
  const build = Bun.spawn([process.execPath, join(ROOT, "build", "release.ts"), "--target", `linux-${arch}`, "--role", "generic", "--out", join(dir, "bin")], { stdout: "pipe", stderr: "pipe", cwd: ROOT });
  const [buildErr, buildCode] = await Promise.all([new Response(build.stderr).text(), build.exited]);
  if (buildCode !== 0) throw new Error(`build failed: ${buildErr.trim()}`);
  AGENT = [join(dir, "bin", `agent-linux-${arch}`)];
  say(`built ${AGENT[0]} (${(await agent(["--version"])).split("\n")[0]})`);

  const ca = join(dir, "ca");
  await agent(["pki", "init", "--dir", ca]);
  const sock = (role: string) => join(dir, `${role}.sock`);
  const fleet = [
    { role: "relay", id: "relay-demo", issue: ["--host", "localhost", "--host", "127.0.0.1"], run: () => ["--listen", "127.0.0.1:0", "--revocations", join(ca, "revoked")] },
    { role: "onsite", id: "site-1", issue: [], run: () => ["--relay", `127.0.0.1:${relayPort}`, "--location", "Royal Champagne", "--allow", "127.0.0.1/32"] },
    { role: "master", id: "tech-1", issue: [], run: () => ["--relay", `127.0.0.1:${relayPort}`, "--gui", "127.0.0.1:0"] },
  ];
  let relayPort = 0;
  for (const f of fleet) {
    const bundle = join(dir, `${f.id}.bundle`);
    await agent(["pki", "issue", "--dir", ca, "--role", f.role, "--id", f.id, ...f.issue, "--out", bundle]);
    if (f.role === "master") await agentStdin(["gui", "user", "add", GUI_USER, "--state-dir", join(dir, "state-master")], GUI_PASSWORD + "\n");
    const p = Bun.spawn([...AGENT, "--role", f.role, "--bundle", bundle, ...f.run(), "--control", sock(f.role), "--state-dir", join(dir, `state-${f.role}`)], {
      stdout: "pipe",
      stderr: "pipe",
    });
    children.push(p);
    void prefixLines(p.stderr, f.role);
    const until = Date.now() + 10_000;
    while (!existsSync(sock(f.role)) && p.exitCode === null && Date.now() < until) await Bun.sleep(20);
    if (!existsSync(sock(f.role))) throw new Error(`${f.role} daemon did not open its control socket`);
    if (f.role === "relay") {
      relayPort = (JSON.parse(await agent(["status", "--json", "--control", sock("relay")])) as { relay: { port: number } }).relay.port;
      say(`relay listening on 127.0.0.1:${relayPort}`);
    }
  }

  // The "LAN device": an HTTP service on 127.0.0.1 that only the onsite device's allow list reaches.
  lanService = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: () =>
      new Response(`<!doctype html><title>LAN device behind site-1</title><h1>Hello from the LAN device behind site-1 (Royal Champagne)</h1><p>This page came through master → relay → onsite over TLS.</p>\n`, {
        headers: { "content-type": "text/html; charset=utf-8" },
      }),
  });
  say(`LAN service (stands for a device behind site-1) on 127.0.0.1:${lanService.port}`);

  const until = Date.now() + 20_000;
  let devices = "";
  while (Date.now() < until) {
    devices = await agent(["devices", "--control", sock("master")]).catch(() => "");
    if (/^site-1\s+online/m.test(devices)) break;
    await Bun.sleep(100);
  }
  if (!/^site-1\s+online/m.test(devices)) throw new Error("site-1 did not come online at the relay");
  say("agent devices (on the master):");
  process.stdout.write(devices);

  say(`agent connect site-1 --forward 127.0.0.1:0:127.0.0.1:${lanService.port} --ttl 8h`);
  const session = JSON.parse(await agent(["connect", "site-1", "--forward", `127.0.0.1:0:127.0.0.1:${lanService.port}`, "--ttl", "8h", "--json", "--control", sock("master")])) as {
    session: string;
    forwards: { port: number }[];
  };
  const url = `http://127.0.0.1:${session.forwards[0]!.port}/`;
  const page = await (await fetch(url)).text();
  const title = /<title>([^<]*)<\/title>/.exec(page)?.[1] ?? "(no title)";
  say(`fetched through the forward: "${title}"`);
  process.stdout.write(await agent(["sessions", "--control", sock("master")]));
  say(`open ${url} in a browser (session ${session.session})`);
  // The web GUI, served by the compiled executable: its page and its script are embedded.
  const gui = (JSON.parse(await agent(["status", "--json", "--control", sock("master")])) as { gui: { url: string } }).gui.url;
  const html = await (await fetch(gui)).text();
  const script = /src="(\/[^"]+\.js)"/.exec(html)?.[1];
  const js = script ? await fetch(new URL(script, gui)) : null;
  if (!js?.ok) throw new Error(`the GUI at ${gui} does not serve its page and script`);
  say(`web GUI: ${gui} (user ${GUI_USER}, password ${GUI_PASSWORD}); page and script served by the executable`);
  if (once) return;
  say("relay, onsite and master are running; press Ctrl-C to stop and clean up");
  await new Promise<void>((resolve) => {
    process.once("SIGINT", () => resolve());
    process.once("SIGTERM", () => resolve());
  });
}

let code = 0;
try {
  await main();
} catch (e) {
  process.stderr.write(`demo: ${(e as Error).message}\n`);
  code = 1;
} finally {
  await cleanup();
  say(`stopped ${children.length} daemons and removed ${dir}`);
}
process.exit(code);
