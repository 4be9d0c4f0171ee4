// A netconnectd client as its own tools talk to the agent's control socket: one JSON request
// ended by NUL, one JSON answer ended by NUL, then the daemon closes the connection.
/** One netconnectd request: JSON + NUL in, JSON + NUL out, connection closed by the daemon. */
export function netconnectd(control: string, req: unknown, ms = 60_000): Promise<{ result?: unknown; error?: string }> {
  return new Promise((resolve, reject) => {
    let text = "";
    const t = setTimeout(() => reject(new Error(`netconnectd ${JSON.stringify(req)}: no answer in ${ms} ms`)), ms);
    void Bun.connect({
      unix: control,
      socket: {
        open(s) {
          s.write(JSON.stringify(req) + "\0");
        },
        data(_s, d) {
          text += d.toString();
        },
        close() {
          clearTimeout(t);
          if (!text.endsWith("\0")) reject(new Error(`netconnectd ${JSON.stringify(req)}: answer not NUL-terminated: ${JSON.stringify(text)}`));
          else resolve(JSON.parse(text.slice(0, -1)));
        },
      },
    }).catch(reject);
  });
}
