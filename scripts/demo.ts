// The README's run command (`make demo`): a throwaway fleet on this machine, without root.
// Creates a CA and one bundle per role, starts relay, onsite and master daemons on
// 127.0.0.1, shows what each reports over its control socket, and runs until Ctrl-C,
// then stops every process it started and removes its temporary files.
// `--once` stops right after the status round (used by the test suite).
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";

const ROOT = join(import.meta.dir, "..");
const MAIN = join(ROOT, "src", "main.ts");
const once = process.argv.includes("--once");
const dir = mkdtempSync(join(tmpdir(), "agent-demo-"));
const children: Subprocess[] = [];

function say(line: string) {
  process.stdout.write(`demo: ${line}\n`);
}

async function agent(args: string[]): Promise<string> {
  const p = Bun.spawn([process.execPath, MAIN, ...args], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`agent ${args.join(" ")} failed (${code}): ${err.trim()}`);
  return out;
}

async function freePort(): Promise<number> {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
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
  for (const c of children) if (c.exitCode === null) c.kill("SIGTERM");
  await Promise.all(children.map((c) => c.exited));
  rmSync(dir, { recursive: true, force: true });
}

async function main() {
  const ca = join(dir, "ca");
  say(`throwaway fleet in ${dir}`);
  await agent(["pki", "init", "--dir", ca]);
  const relayPort = await freePort();
  const fleet = [
    { role: "relay", id: "relay-demo", issue: ["--host", "localhost", "--host", "127.0.0.1"], run: ["--listen", `127.0.0.1:${relayPort}`, "--revocations", join(ca, "revoked")] },
    { role: "onsite", id: "site-1", issue: [], run: ["--relay", `127.0.0.1:${relayPort}`, "--location", "Royal Champagne", "--allow", "127.0.0.1/32"] },
    { role: "master", id: "tech-1", issue: [], run: ["--relay", `127.0.0.1:${relayPort}`] },
  ];
  for (const f of fleet) {
    const bundle = join(dir, `${f.id}.bundle`);
    await agent(["pki", "issue", "--dir", ca, "--role", f.role, "--id", f.id, ...f.issue, "--out", bundle]);
    const sock = join(dir, `${f.role}.sock`);
    const p = Bun.spawn(
      [process.execPath, MAIN, "--role", f.role, "--bundle", bundle, ...f.run, "--control", sock, "--state-dir", join(dir, `state-${f.role}`)],
      { stdout: "pipe", stderr: "pipe" },
    );
    children.push(p);
    void prefixLines(p.stderr, f.role);
    const until = Date.now() + 10_000;
    while (!existsSync(sock) && p.exitCode === null && Date.now() < until) await Bun.sleep(20);
    if (!existsSync(sock)) throw new Error(`${f.role} daemon did not open its control socket`);
  }
  await agent(["pki", "list", "--dir", ca]).then((out) => process.stdout.write(out));
  for (const f of fleet) {
    say(`agent status --control ${join(dir, `${f.role}.sock`)}`);
    process.stdout.write(await agent(["status", "--control", join(dir, `${f.role}.sock`)]));
  }
  if (once) return;
  say("relay, onsite and master are running; press Ctrl-C to stop and clean up");
  say("(sessions and port forwards arrive with the relay issue; this shows the daemons and their control sockets)");
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
