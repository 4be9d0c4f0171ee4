// The floor of one relay hop: what Bun's TLS costs a process per GB on loopback, sending and
// receiving, against plain TCP, at several write sizes. One sender process writes 1 GiB as fast
// as its socket takes it, one receiver process counts it; each reports its own CPU per GB.
// A relay hop receives on one TLS link and sends on another, so its CPU per GB cannot fall
// below tx + rx here (docs/cluster.md, "Cluster figures, session 5").
//
//   bun bench/tls-floor.ts            (TLS_FLOOR_SIZES=16384,65536,262144,1048576)
import { createCa, issueCertificate, parseCa } from "../src/pki.ts";

const TOTAL = 1 << 30;
const [role, cfgText, tlsArg, portArg, sizeArg] = process.argv.slice(2);

if (!role) {
  const caText = createCa({ name: "tls floor CA" });
  const ca = parseCa(caText.certPem, caText.keyPem);
  const c = issueCertificate(ca, { role: "relay", id: "relay-floor", hosts: ["127.0.0.1"] });
  const cfg = JSON.stringify({ cert: c.certPem, key: c.keyPem, ca: ca.certPem });
  console.log("write size  link   sender MB/s  sender CPU s/GB  receiver CPU s/GB");
  for (const size of (process.env.TLS_FLOOR_SIZES ?? "16384,65536,262144,1048576").split(",").map(Number)) {
    for (const tls of [true, false]) {
      const rx = Bun.spawn([process.execPath, import.meta.path, "rx", cfg, String(tls)], { stdout: "pipe", stderr: "inherit" });
      const lines = rx.stdout.getReader();
      const port = Number(new TextDecoder().decode((await lines.read()).value).trim());
      const tx = Bun.spawn([process.execPath, import.meta.path, "tx", cfg, String(tls), String(port), String(size)], { stdout: "pipe", stderr: "inherit" });
      const sent = JSON.parse(await new Response(tx.stdout).text()) as { mbps: number; cpu: number };
      const got = JSON.parse(new TextDecoder().decode((await lines.read()).value)) as { cpu: number };
      console.log(`${String(size).padStart(10)}  ${(tls ? "TLS" : "TCP").padEnd(5)}  ${sent.mbps.toFixed(0).padStart(11)}  ${sent.cpu.toFixed(2).padStart(15)}  ${got.cpu.toFixed(2).padStart(17)}`);
      rx.kill();
      await rx.exited;
    }
  }
  process.exit(0);
}

const cfg = JSON.parse(cfgText!) as { cert: string; key: string; ca: string };
const tls = tlsArg === "true";
const perGB = (c0: NodeJS.CpuUsage, bytes: number) => {
  const u = process.cpuUsage(c0);
  return (u.user + u.system) / 1e6 / (bytes / 1e9);
};

if (role === "rx") {
  let got = 0;
  let c0 = process.cpuUsage();
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    tls: tls ? { cert: cfg.cert, key: cfg.key, ca: cfg.ca } : undefined,
    socket: {
      open() {
        c0 = process.cpuUsage();
      },
      data(_s, d) {
        got += d.length;
        if (got >= TOTAL) {
          console.log(JSON.stringify({ cpu: perGB(c0, got) }));
          got = -Infinity;
        }
      },
    },
  });
  console.log(l.port);
} else {
  const size = Number(sizeArg);
  const buf = new Uint8Array(size).fill(7);
  let sent = 0;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let done = false;
  const pump = (s: { write(b: Uint8Array): number }) => {
    while (sent < TOTAL) {
      const n = s.write(buf);
      if (n > 0) sent += n;
      if (n < size) return; // the rest of this buffer is dropped (only bytes written count); more at drain
    }
    if (done) return;
    done = true;
    console.log(JSON.stringify({ mbps: sent / 1e6 / ((performance.now() - t0) / 1000), cpu: perGB(c0, sent) }));
    setTimeout(() => process.exit(0), 300);
  };
  await Bun.connect({
    hostname: "127.0.0.1",
    port: Number(portArg),
    tls: tls ? { ca: cfg.ca, cert: cfg.cert, key: cfg.key, serverName: "127.0.0.1" } : undefined,
    socket: { open: pump, drain: pump, data() {} },
  });
}
