// Typed control messages over a Connection: the catalogue of messages.ts (one body type and one
// decoder per message) on top of Connection's untyped request/handle/on/send. A body that does
// not decode never reaches a handler: a request is answered BAD_REQUEST with the decoder's
// message ("targets: expected 1-64 HOST:PORT strings"), a one-way message goes to `onBad`.
import { type Connection, RemoteError } from "./mux.ts";
import { ErrorCode, MessageError, decoders, replyDecoders, type BodyOf, type MsgType, type OneWayMsg, type ReplyOf, type RequestMsg } from "./messages.ts";

/** Sends a request and decodes its result; a result of the wrong shape throws MessageError. */
export async function request<M extends RequestMsg>(conn: Connection, type: M, body: BodyOf<M>, timeoutMs?: number): Promise<ReplyOf<M>> {
  const result = await conn.request(type, body as unknown as Record<string, unknown>, timeoutMs);
  return replyDecoders[type](result) as ReplyOf<M>;
}

/** Serves a request type: `fn` sees the decoded body; what it returns (or throws) is the REPLY. */
export function handle<M extends RequestMsg>(conn: Connection, type: M, fn: (body: BodyOf<M>, conn: Connection) => ReplyOf<M> | Promise<ReplyOf<M>>): void {
  conn.handle(type, (raw, c) => fn(decodeOr(type, raw, (message) => new RemoteError(ErrorCode.BAD_REQUEST, message)), c));
}

/**
 * Listens for a one-way message type. A body that does not decode is handed to `onBad` (default:
 * a debug line) and otherwise dropped: a listener that threw would close the connection as a
 * protocol error, which is too much for a field of the wrong type.
 */
export function on<M extends OneWayMsg>(conn: Connection, type: M, fn: (body: BodyOf<M>, conn: Connection) => void, onBad?: (err: Error) => void): void {
  conn.on(type, (raw, c) => {
    let body: BodyOf<M>;
    try {
      body = decoders[type](raw) as BodyOf<M>;
    } catch (e) {
      if (onBad) onBad(e as Error);
      else c.log.debug(`ignoring a malformed control message ${type}: ${(e as Error).message}`);
      return;
    }
    fn(body, c);
  });
}

/** Sends a one-way message (the body type is checked at compile time). */
export function send<M extends OneWayMsg>(conn: Connection, type: M, body: BodyOf<M>): void {
  conn.send(type, body as unknown as Record<string, unknown>);
}

/** Decodes a body, turning a MessageError into the caller's error (with its message). */
export function decodeOr<M extends MsgType>(type: M, raw: unknown, wrap: (message: string) => Error): BodyOf<M> {
  try {
    return decoders[type](raw) as BodyOf<M>;
  } catch (e) {
    if (e instanceof MessageError) throw wrap(e.message);
    throw e;
  }
}
