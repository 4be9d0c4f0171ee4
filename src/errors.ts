// Error kinds that decide the exit code. The CLI layer maps them; nothing below it exits.
//   UsageError   → exit 2: bad flags, bad config, missing or unsafe files. Message + hint.
//   RuntimeError → exit 1: the request was well formed but could not be carried out.
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

export const EXIT_OK = 0;
export const EXIT_RUNTIME = 1;
export const EXIT_USAGE = 2;

export function exitCodeOf(err: unknown): number {
  return err instanceof UsageError ? EXIT_USAGE : EXIT_RUNTIME;
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
