// Joins two Duplex ends (a TCP connection and a multiplexed stream, in production), both ways:
// what one reads the other writes, a side that cannot take more pauses the source until it
// drains, a FIN travels on as a FIN (the other direction goes on), and a reset or a lost
// connection on one side resets the other, so the far client sees a failure, never a clean end.
import { ResetCode } from "../transport/frame.ts";
import { StreamError, type Stream } from "../transport/mux.ts";
import type { Duplex } from "./duplex.ts";

export class Pipe {
  private cleanCloses = 0;
  private finished = false;

  /** `onDone` runs once: null when both sides finished cleanly, else the first failure. */
  constructor(a: Duplex, b: Duplex, private readonly onDone?: (err: Error | null) => void) {
    this.join(a, b);
    this.join(b, a);
    a.resume();
    b.resume();
  }

  /** What `from` reads goes to `to`; `from`'s drain lets `to` read again. */
  private join(from: Duplex, to: Duplex): void {
    from.setHandlers({
      data: (chunk) => {
        if (!to.write(chunk)) from.pause();
      },
      drain: () => to.resume(),
      end: () => to.end(),
      close: (err) => {
        if (err) {
          this.finish(err);
          to.reset(err);
        } else if (++this.cleanCloses === 2) {
          this.finish(null);
        }
      },
    });
  }

  private finish(err: Error | null): void {
    if (this.finished) return;
    this.finished = true;
    this.onDone?.(err);
  }
}

/**
 * A mux Stream as a Duplex. Its chunks are slices of the buffers the link hands over (one of
 * its own per socket read) or copies, so they are the receiver's to keep. A reset carries the
 * StreamError's code when the error is one (a stream piped to a stream), else CANCEL.
 */
export function streamDuplex(stream: Stream): Duplex {
  return {
    write: (chunk) => stream.write(chunk),
    end: () => stream.end(),
    reset: (err) => stream.reset(err instanceof StreamError ? err.code : ResetCode.CANCEL, err.message),
    pause: () => stream.pause(),
    resume: () => stream.resume(),
    setHandlers(h) {
      stream.ondata = (chunk) => h.data(chunk);
      stream.ondrain = () => h.drain();
      stream.onend = () => h.end();
      stream.onclose = (err) => h.close(err);
    },
    get closed() {
      return stream.closed;
    },
  };
}
