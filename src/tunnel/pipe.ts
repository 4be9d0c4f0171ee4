// Joins two Duplex ends (a TCP connection and a multiplexed stream, in production), both ways:
// what one reads the other writes, a side that cannot take more pauses the source until it
// drains, a FIN travels on as a FIN (the other direction goes on), and a reset or a lost
// connection on one side resets the other, so the far client sees a failure, never a clean end.
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
