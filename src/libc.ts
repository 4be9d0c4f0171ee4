// Kept for callers of the old path: libc now lives in `src/os/libc.ts` (one dlopen for all).
export { libcPath } from "./os/libc.ts";
