// The two peers the transport benchmark measures ours against, built from Debian packages:
// (b) seed 003's design: the onsite device keeps an `ssh -R` reverse tunnel into an sshd
//     (the relay) and the technician runs `ssh -L` to the same sshd; both legs encrypted.
// (c) a relay written in C with the same number of TLS legs as ours:
//     client → stunnel (client) ═TLS═ stunnel (server) → socat → stunnel (client) ═TLS═
//     stunnel (server) → target. The middle two stunnels and socat are the relay.
// TCP_NODELAY is set wherever the program has a knob (stunnel, socat); OpenSSH has none for
// forwarded channels.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Children, freePort, run, waitForListen } from "../../test/helpers/proc.ts";
import { startSshd, type Sshd } from "../../test/helpers/sshd.ts";
import { startOrClean, type Path } from "./path.ts";
import { inScratch } from "./scratch.ts";

const START_MS = 15_000;
/** socat -b for the (c) relay: 64 KiB rather than socat's 8 KiB (see transport.bench.ts). */
export const DEFAULT_SOCAT_BUFFER = 65_536;

// ---------------------------------------------------------------- (b) ssh -R + ssh -L

export async function startSshPath(targets: readonly number[]): Promise<Path> {
  const kids = new Children();
  let sshd: Sshd | undefined;
  const stop = async () => {
    await kids.stopAll();
    await sshd?.stop();
  };
  return startOrClean(async () => {
    sshd = await startSshd();
    const remote = await Promise.all(targets.map(() => freePort()));
    const entries = await Promise.all(targets.map(() => freePort()));
    const common = ["-N", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15"];
    // Onsite: one connection carrying a reverse forward per target.
    const onsite = kids.spawn("ssh -R (onsite)", sshd.sshArgs(sshd.port, [...common, ...targets.flatMap((t, i) => ["-R", `127.0.0.1:${remote[i]}:127.0.0.1:${t}`])]));
    // sshd, not the ssh client, listens on the remote ports.
    for (const p of remote) await waitForListen(p, START_MS, onsite);
    // Master: one connection carrying a local forward to each of those remote ports.
    const master = kids.spawn("ssh -L (master)", sshd.sshArgs(sshd.port, [...common, ...entries.flatMap((e, i) => ["-L", `127.0.0.1:${e}:127.0.0.1:${remote[i]}`])]));
    for (const p of entries) await waitForListen(p, START_MS, master, { owned: true });
    const cipher = /cipher:\s*(\S+)/.exec((await run([...sshd.sshArgs(sshd.port, ["-v"]), "true"], { timeoutMs: 20_000 })).stderr);
    return {
      name: "(b) ssh -R + ssh -L",
      entries,
      relayPids: [sshd.pid],
      pathPids: [sshd.pid, onsite.pid, master.pid],
      notes: `OpenSSH defaults (cipher ${cipher?.[1] ?? "?"}), no TCP_NODELAY knob for forwarded channels`,
      stop,
      [Symbol.asyncDispose]: stop,
    } satisfies Path;
  }, stop);
}

// ---------------------------------------------------------------- (c) stunnel + socat + stunnel

async function openssl(args: string[], cwd: string): Promise<void> {
  const r = await run(["openssl", ...args], { cwd, timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`openssl ${args.join(" ")} failed (exit ${r.code}): ${r.stderr.trim()}`);
}

/**
 * A CA and two RSA-2048 leaf certificates (the size our PKI issues), for the stunnel legs:
 * `server` for 127.0.0.1 and `client` for mutual authentication, as our transport does.
 */
export async function makeTlsFiles(dir: string): Promise<{ ca: string; server: { cert: string; key: string }; client: { cert: string; key: string } }> {
  await openssl(
    ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=bench CA",
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    dir,
  );
  for (const [name, eku] of [["server", "serverAuth"], ["client", "clientAuth"]] as const) {
    writeFileSync(join(dir, `${name}.ext`), `subjectAltName=IP:127.0.0.1\nextendedKeyUsage=${eku}\nbasicConstraints=CA:FALSE\n`);
    await openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=bench ${name}`], dir);
    await openssl(["x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", `${name}.crt`, "-days", "2", "-extfile", `${name}.ext`], dir);
  }
  return {
    ca: join(dir, "ca.crt"),
    server: { cert: join(dir, "server.crt"), key: join(dir, "server.key") },
    client: { cert: join(dir, "client.crt"), key: join(dir, "client.key") },
  };
}

export interface StunnelService {
  name: string;
  accept: number;
  connect: number;
}

/** One stunnel process's config: TLS 1.3 only, mutual authentication, TCP_NODELAY both sides. */
export function stunnelConfig(o: { mode: "client" | "server"; services: readonly StunnelService[]; ca: string; cert: string; key: string }): string {
  const global = ["foreground = yes", "pid =", "syslog = no", "debug = 4", "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1", ""];
  const svc = o.services.flatMap((s) => [
    `[${s.name}]`,
    `client = ${o.mode === "client" ? "yes" : "no"}`,
    `accept = 127.0.0.1:${s.accept}`,
    `connect = 127.0.0.1:${s.connect}`,
    `cert = ${o.cert}`,
    `key = ${o.key}`,
    `CAfile = ${o.ca}`,
    "verifyChain = yes",
    "sslVersionMin = TLSv1.3",
    "",
  ]);
  return [...global, ...svc].join("\n");
}

export async function startStunnelPath(targets: readonly number[], opts: { socatBuffer?: number } = {}): Promise<Path> {
  return inScratch("agent-bench-stunnel-", async ({ kids, dir, stop }) => {
    const tls = await makeTlsFiles(dir);
    const ports = async () => Promise.all(targets.map(() => freePort()));
    // entry → [A client] ═TLS═ r1 → [B server] → s → [socat] → m → [C client] ═TLS═ r2 → [D server] → target
    const [entries, r1, s, m, r2] = [await ports(), await ports(), await ports(), await ports(), await ports()];
    const spawnStunnel = async (label: string, mode: "client" | "server", services: StunnelService[], id: { cert: string; key: string }) => {
      const file = join(dir, `${label}.conf`);
      writeFileSync(file, stunnelConfig({ mode, services, ca: tls.ca, ...id }));
      const c = kids.spawn(`stunnel ${label}`, ["stunnel", file]);
      for (const svc of services) await waitForListen(svc.accept, START_MS, c, { owned: true });
      return c;
    };
    const svc = (from: number[], to: number[]) => targets.map((_, i) => ({ name: `t${i}`, accept: from[i]!, connect: to[i]! }));
    // Start from the target end so every hop's next hop already listens.
    const d = await spawnStunnel("D-onsite-server", "server", svc(r2, [...targets]), tls.server);
    const cMid = await spawnStunnel("C-relay-client", "client", svc(m, r2), tls.client);
    const socats = [];
    for (let i = 0; i < targets.length; i++) {
      const argv = ["socat", "-b", String(opts.socatBuffer ?? DEFAULT_SOCAT_BUFFER)];
      argv.push(`TCP-LISTEN:${s[i]},bind=127.0.0.1,reuseaddr,fork,nodelay`, `TCP:127.0.0.1:${m[i]},nodelay`);
      const c = kids.spawn(`socat ${i}`, argv);
      await waitForListen(s[i]!, START_MS, c, { owned: true });
      socats.push(c);
    }
    const bMid = await spawnStunnel("B-relay-server", "server", svc(r1, s), tls.server);
    const a = await spawnStunnel("A-master-client", "client", svc(entries, r1), tls.client);
    const version = (await run(["stunnel", "-version"], { timeoutMs: 10_000 })).stderr.split("\n").find((l) => l.startsWith("stunnel")) ?? "stunnel";
    return {
      name: "(c) stunnel+socat+stunnel",
      entries,
      relayPids: [bMid.pid, ...socats.map((c) => c.pid), cMid.pid],
      pathPids: [a.pid, bMid.pid, ...socats.map((c) => c.pid), cMid.pid, d.pid],
      notes: `${version.trim()}, TLS 1.3 (OpenSSL default suite), mutual auth, RSA-2048; socat -b ${opts.socatBuffer ?? DEFAULT_SOCAT_BUFFER}, fork per connection`,
      stop,
      [Symbol.asyncDispose]: stop,
    } satisfies Path;
  });
}
