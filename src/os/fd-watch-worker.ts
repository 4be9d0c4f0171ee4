// The thread behind fd-watch.ts: blocks in poll(2) on the armed fds and a wake socket, and
// tells the main thread which slots became readable. It owns nothing: the main thread opens,
// reads and closes every fd; this thread only waits, so the main thread never polls on a timer.
//
// Shared state (an Int32Array over a SharedArrayBuffer, written by the main thread):
//   [0]           generation: bumped by the main thread on every change (informational)
//   [1 + 2i]      slot i's fd (-1: free)
//   [2 + 2i]      slot i armed (1) or not (0); this thread clears it when it reports the slot
declare const self: Worker;
import { ptr } from "bun:ffi";
import { libc, MSG_DONTWAIT, POLLIN } from "./libc.ts";

interface Init {
  shared: SharedArrayBuffer;
  slots: number;
  wakeFd: number;
}

self.onmessage = (e: MessageEvent<Init>) => {
  const { shared, slots, wakeFd } = e.data;
  const s = new Int32Array(shared);
  const l = libc();
  const pfd = Buffer.alloc(8 * (slots + 1));
  const which: number[] = [];
  const junk = Buffer.alloc(64);
  const loop = () => {
    for (;;) {
      which.length = 0;
      pfd.writeInt32LE(wakeFd, 0);
      pfd.writeInt16LE(POLLIN, 4);
      pfd.writeInt16LE(0, 6);
      let n = 1;
      for (let i = 0; i < slots; i++) {
        const fd = Atomics.load(s, 1 + 2 * i);
        if (fd < 0 || Atomics.load(s, 2 + 2 * i) !== 1) continue;
        pfd.writeInt32LE(fd, 8 * n);
        pfd.writeInt16LE(POLLIN, 8 * n + 4);
        pfd.writeInt16LE(0, 8 * n + 6);
        which.push(i);
        n++;
      }
      // A bounded wait: a lost wake-up costs at most this long, never a hang.
      const r = l.poll(ptr(pfd), n, 1000);
      if (r <= 0) continue;
      if (pfd.readInt16LE(6) !== 0) while (Number(l.recv(wakeFd, ptr(junk), junk.length, MSG_DONTWAIT)) > 0);
      const ready: number[] = [];
      for (let k = 1; k < n; k++) {
        if (pfd.readInt16LE(8 * k + 6) === 0) continue;
        const i = which[k - 1]!;
        Atomics.store(s, 2 + 2 * i, 0);
        ready.push(i);
      }
      if (ready.length > 0) {
        postMessage(ready);
        // Let the message go out: postMessage is delivered from this thread's event loop.
        setImmediate(loop);
        return;
      }
    }
  };
  loop();
};
