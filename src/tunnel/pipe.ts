// Joins a TCP socket and a multiplexed stream, both ways, with backpressure on each side and
// half-close carried through: the socket's FIN becomes the stream's FIN and back. A reset
// stream kills the socket abruptly so the client sees a failure, never a clean end.
import type { Socket } from "bun";
import { ResetCode } from "../transport/frame.ts";
import type { Stream } from "../transport/mux.ts";

export interface PipeData {
  pipe: Pipe | null;
}

export class Pipe {
  private pending: Uint8Array[] = [];
  private endAfterPending = false;
  private socketEnded = false;
  private streamEnded = false;
  private finished = false;

  constructor(private readonly socket: Socket<PipeData>, private readonly stream: Stream, private readonly onDone?: (err: Error | null) => void) {
    // A listener's `data` option is one object shared by all its sockets: give each its own.
    socket.data = { pipe: this };
    socket.setNoDelay(true);
    stream.ondata = (chunk) => this.toSocket(chunk);
    stream.ondrain = () => socket.resume();
    stream.onend = () => {
      this.streamEnded = true;
      if (this.pending.length) this.endAfterPending = true;
      else this.shutdownSocket();
    };
    stream.onclose = (err) => {
      if (err) {
        this.finish(err);
        socket.terminate();
      } else if (this.socketEnded) {
        this.finish(null);
        socket.end();
      }
    };
    stream.resume();
  }

  private toSocket(chunk: Uint8Array): void {
    if (this.pending.length) {
      this.pending.push(chunk.slice());
      return;
    }
    const n = this.socket.write(chunk);
    if (n < 0) return;
    if (n < chunk.length) {
      // Keep a copy: the stream's buffer may be reused once we return.
      this.pending.push(chunk.slice(n));
      this.stream.pause();
    }
  }

  /** socket drain */
  drain(): void {
    while (this.pending.length) {
      const head = this.pending[0]!;
      const n = this.socket.write(head);
      if (n < 0) return;
      if (n < head.length) {
        this.pending[0] = head.subarray(n);
        return;
      }
      this.pending.shift();
    }
    if (this.endAfterPending) {
      this.endAfterPending = false;
      this.shutdownSocket();
    }
    this.stream.resume();
  }

  /** socket data */
  data(chunk: Uint8Array): void {
    if (!this.stream.write(chunk)) this.socket.pause();
  }

  /** socket end: the client sent FIN */
  end(): void {
    this.socketEnded = true;
    this.stream.end();
    if (this.streamEnded && this.pending.length === 0 && !this.endAfterPending) {
      this.finish(null);
      this.socket.end();
    }
  }

  /** socket closed (either way) */
  closed(err: Error | null): void {
    if (this.finished) return;
    if (this.socketEnded && this.streamEnded) {
      this.finish(null);
      return;
    }
    const e = err ?? new Error("the connection closed before both directions had finished");
    this.finish(e);
    this.stream.reset(ResetCode.CANCEL, e.message);
  }

  private shutdownSocket(): void {
    if (this.socketEnded) {
      this.finish(null);
      this.socket.end();
    } else {
      this.socket.shutdown();
    }
  }

  private finish(err: Error | null): void {
    if (this.finished) return;
    this.finished = true;
    this.onDone?.(err);
  }
}

/** Socket handlers that drive the Pipe stored in `socket.data`. */
export const pipeSocketHandlers = {
  data(socket: Socket<PipeData>, chunk: Uint8Array) {
    socket.data.pipe?.data(chunk);
  },
  drain(socket: Socket<PipeData>) {
    socket.data.pipe?.drain();
  },
  end(socket: Socket<PipeData>) {
    socket.data.pipe?.end();
  },
  close(socket: Socket<PipeData>, err?: Error) {
    socket.data.pipe?.closed(err ?? null);
  },
  error(socket: Socket<PipeData>, err: Error) {
    socket.data.pipe?.closed(err);
  },
};
