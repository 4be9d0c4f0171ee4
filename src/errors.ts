// Error kinds that decide the exit code. The CLI layer maps them; nothing below it exits.
//   UsageError   → exit 2: bad flags, bad config, missing or unsafe files. Message + hint.
//   RuntimeError → exit 1: the request was well formed but could not be carried out.
//   NotFoundError → exit 4: the session, device or rule named does not exist (any command).
//   (exit 3 is `agent status`'s: the daemon runs but is not connected to the relay.)
// Anything else is an unexpected failure and also exits 1, with its cause chain logged.

/** An error meant for a person: a short message and, where there is one, the fix. */
abstract class HintedError extends Error {
  readonly hint: string | undefined;
  constructor(message: string, hint?: string, options?: ErrorOptions) {
    super(message, options);
    this.hint = hint;
  }
}

export class UsageError extends HintedError {
  override readonly name = "UsageError";
}

export class RuntimeError extends HintedError {
  override readonly name = "RuntimeError";
}

/** The thing a request names (a session, a device, a NAT rule) does not exist. */
export class NotFoundError extends HintedError {
  override readonly name = "NotFoundError";
}

export const EXIT_OK = 0;
export const EXIT_RUNTIME = 1;
export const EXIT_USAGE = 2;
/** `agent status`: the daemon runs, but its link to the relay is not up. */
export const EXIT_NOT_CONNECTED = 3;
export const EXIT_NOT_FOUND = 4;

export function exitCodeOf(err: unknown): number {
  return err instanceof UsageError ? EXIT_USAGE : err instanceof NotFoundError ? EXIT_NOT_FOUND : EXIT_RUNTIME;
}

/** "outer: inner: innermost" for errors built with `{ cause }`. */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  let cur: unknown = err;
  for (let depth = 0; cur !== undefined && cur !== null && depth < 8; depth++) {
    if (cur instanceof Error) {
      parts.push(cur.message);
      cur = cur.cause;
    } else {
      parts.push(String(cur));
      break;
    }
  }
  return parts.join(": ");
}
