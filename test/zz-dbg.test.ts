import { test, expect } from "bun:test";
test("dbg", async () => {
  const ev: string[] = [];
  for (const mode of ["fin", "rst", "fin-later", "rst-before-shutdown"]) {
  const server = Bun.listen<{}>({ hostname: "127.0.0.1", port: 0, allowHalfOpen: true, data: {}, socket: {
    data(s, c) { ev.push("srv data " + c.length); s.write(c); if (mode === "rst-before-shutdown") s.terminate(); },
    end(s) { ev.push("srv end"); s.write("bye\n"); if (mode === "fin") s.end(); else if (mode === "rst") s.terminate(); else setTimeout(() => s.end(), 100); },
    close() { ev.push("srv close"); },
  }});
  const raw = await Bun.connect({ hostname: "127.0.0.1", port: server.port, allowHalfOpen: true, socket: {
    data(s, c) { ev.push("raw data " + c.length); }, end() { ev.push("raw end"); }, close(s, e) { ev.push("raw close " + e); }, error(s, e) { ev.push("raw error " + e); } } });
  raw.write("hello\n");
  if (mode === "rst-before-shutdown") await Bun.sleep(100);
  raw.shutdown();
  await Bun.sleep(300);
  ev.push("---- " + mode);
  server.stop(true);
  }
  console.log(ev.join("\n"));
});
