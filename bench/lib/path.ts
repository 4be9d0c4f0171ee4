// What the transport benchmark needs from each way of reaching a target: entry ports that
// lead to the target ports, the pids of the process(es) playing the relay, and the pids of
// every process of the path (to count the whole path's CPU), and a stop that ends them all.

export interface Path extends AsyncDisposable {
  name: string;
  /** Entry port on 127.0.0.1 for each target port given at start, in the same order. */
  entries: number[];
  /** Roots of the process trees that play the relay (their forked children are counted too). */
  relayPids: number[];
  /** Roots of every process tree of the path, relay included. */
  pathPids: number[];
  /** One line on how it is set up (ciphers, buffer sizes), for the report. */
  notes: string;
  stop(): Promise<void>;
}

/** Runs `fn`; if it throws, stops what was started so far (`cleanup`) and rethrows. */
export async function startOrClean<T>(fn: () => Promise<T>, cleanup: () => Promise<void>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    await cleanup();
    throw e;
  }
}
