// src/os/fd-watch.ts on real sockets: a callback once the fd is readable and armed, none while
// unarmed, none after remove; the worker thread never reads (the data stays for the owner).
import { expect, test } from "bun:test";
import { ptr } from "bun:ffi";
import { AF_UNIX, libc, MSG_DONTWAIT, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, socketPair } from "../src/os/libc.ts";
import { FdWatcher } from "../src/os/fd-watch.ts";
import { holdsFor, waitFor } from "./helpers/wait.ts";

test("readable → one callback per arm; unarmed or removed → none", async () => {
  const [a, b] = socketPair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
  const l = libc();
  const send = () => l.send(a, ptr(Buffer.from("x")), 1, MSG_DONTWAIT);
  const buf = Buffer.alloc(16);
  const drain = () => {
    let n = 0;
    while (Number(l.recv(b, ptr(buf), buf.length, MSG_DONTWAIT)) > 0) n++;
    return n;
  };
  let calls = 0;
  const w = FdWatcher.get().add(b, () => calls++);
  expect(FdWatcher.get().watching).toBeGreaterThanOrEqual(1);
  send();
  await holdsFor(() => calls > 0, 150, "no callback before arm()");
  w.arm();
  await waitFor(() => calls === 1, 3_000, "the callback after arm()");
  // The worker only waits: the datagram is still there for the owner.
  expect(drain()).toBe(1);
  send();
  await holdsFor(() => calls > 1, 150, "no second callback until re-armed");
  w.arm();
  await waitFor(() => calls === 2, 3_000, "the callback after the second arm()");
  drain();
  w.arm();
  w.remove();
  send();
  await holdsFor(() => calls > 2, 200, "no callback after remove()");
  l.close(a);
  l.close(b);
});
