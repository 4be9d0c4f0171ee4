// nymea-remoteproxy's v1 "proxy" protocol (upstream 1.8.4), pure: framing, the JSON-RPC codec,
// the method catalogue and its error texts. No sockets, no timers.
//
// Protocol flow (see ../../../README.md and /work/shared/PROTOCOLS.md §2):
//
//   client                                  relay
//   {"id":0,"method":"RemoteProxy.Hello"} ─▶
//                                        ◀─ {"id":0,"params":{apiVersion,name,server,version},"status":"success"}\n
//   {"id":1,"method":"Authentication.Authenticate","params":{name,nonce?,token,uuid}} ─▶
//                                        ◀─ {"id":1,"params":{"authenticationError":"AuthenticationErrorNoError"},"status":"success"}\n
//   (waits alone until the partner with the same token [+ nonce] arrives)
//                                        ◀─ {"id":N,"notification":"RemoteProxy.TunnelEstablished","params":{name,uuid}}\n
//   raw bytes ◀────────────────────────────────────────────────────────────▶ raw bytes of the partner
//
// Framing, client → server: bytes are appended to a buffer; it is split at every "}\n{" (the
// left part keeps "}"), and a rest that ends in "}\n" or "}" is one more packet. A buffer over
// BUFFER_LIMIT bytes after splitting kills the connection. Server → client: compact JSON with
// keys sorted, then "\n". Every JSON-RPC error answers, then kills.

/** Upstream's `1024 * 10`: more unsplit bytes than this kill the client. */
export const BUFFER_LIMIT = 10_240;

export const SERVER = "nymea-remoteproxy";
/** The upstream release whose protocol this is. */
export const SERVER_VERSION = "1.8.4";
/**
 * What a real 1.8.4 build reports (its qmake turns the declared 0.5 into "5"). No client checks
 * it; we send the same bytes the server we replace sent.
 */
export const API_VERSION = "5";

export const AUTH_ERRORS = [
  "AuthenticationErrorNoError",
  "AuthenticationErrorUnknown",
  "AuthenticationErrorTimeout",
  "AuthenticationErrorAborted",
  "AuthenticationErrorAuthenticationFailed",
  "AuthenticationErrorProxyError",
] as const;
export type AuthError = (typeof AUTH_ERRORS)[number];

/** Kill reasons (the WebSocket close reason with code 1011; TCP just closes). Upstream's texts. */
export const KILL = {
  bufferViolation: "Data buffer size violation.",
  inactive: "Proxy timeout occurred. The socket was inactive.",
  alone: "Proxy timeout occurred. The tunnel partner did not show up.",
  rpcTimeout: "API call timeouted.",
  authFailed: "API call was not successfully.",
  tunnelExists: "Tunnel already exists for this token nonce combination.",
  duplicateUuid: "Duplicated client UUID.",
  loop: "Client loop detected.",
  dataBeforeTunnel: "Data received while authenticated but not remote connected.",
  partnerGone: "Tunnel client disconnected",
  binary: "Binary message not expected.",
  shutdown: "Server shutting down.",
  /** Ours: the address holds too many unauthenticated connections (server.ts). */
  sourceCap: "Too many unauthenticated connections from this address.",
  /** After a JSON-RPC error answer (upstream's text is not part of the protocol; ours). */
  rpcError: "Invalid request.",
} as const;

export const WS_CLOSE_BAD_OPERATION = 1011;

// ---------------------------------------------------------------------------------------------
// Framing

/**
 * The client → server splitter. Works on "binary" strings (one char per byte, latin1), so
 * lengths are byte counts as upstream's QByteArray has them.
 */
export class Framer {
  private buf = "";

  /** Appends `chunk` (latin1); returns the packets now complete, or "violation". */
  push(chunk: string): string[] | "violation" {
    this.buf += chunk;
    const out: string[] = [];
    let i = this.buf.indexOf("}\n{");
    while (i >= 0) {
      out.push(this.buf.slice(0, i + 1));
      this.buf = this.buf.slice(i + 2);
      i = this.buf.indexOf("}\n{");
    }
    if (this.buf.endsWith("}\n") || this.buf.endsWith("}")) {
      out.push(this.buf);
      this.buf = "";
    }
    if (this.buf.length > BUFFER_LIMIT) {
      this.buf = "";
      return "violation";
    }
    return out;
  }

  get buffered(): number {
    return this.buf.length;
  }
}

// ---------------------------------------------------------------------------------------------
// JSON output as Qt writes it

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v !== null && typeof v === "object") {
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) o[k] = sortKeys((v as Record<string, unknown>)[k]);
    return o;
  }
  return v;
}

/** QJsonDocument::Compact with a QVariantMap's sorted keys. */
export function compact(v: unknown): string {
  return JSON.stringify(sortKeys(v));
}

/** QJsonDocument::Indented: 4 spaces, `"k": v`, empty containers as "{\n}" / "[\n]", trailing "\n". */
export function indented(v: unknown): string {
  return indent(sortKeys(v), "") + "\n";
}

function indent(v: unknown, pad: string): string {
  const inner = pad + "    ";
  if (Array.isArray(v)) {
    if (v.length === 0) return "[\n" + pad + "]";
    return "[\n" + v.map((x) => inner + indent(x, inner)).join(",\n") + "\n" + pad + "]";
  }
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 0) return "{\n" + pad + "}";
    return "{\n" + keys.map((k) => `${inner}${JSON.stringify(k)}: ${indent((v as Record<string, unknown>)[k], inner)}`).join(",\n") + "\n" + pad + "}";
  }
  return v === undefined ? "null" : JSON.stringify(v);
}

export function successLine(id: number, params: Record<string, unknown>): string {
  return compact({ id, params, status: "success" }) + "\n";
}

export function errorLine(id: number, error: string): string {
  return compact({ error, id, status: "error" }) + "\n";
}

export function notificationLine(id: number, name: string, params: Record<string, unknown>): string {
  return compact({ id, notification: name, params }) + "\n";
}

// ---------------------------------------------------------------------------------------------
// Values as Qt reads them

/** QVariant::toInt(&ok): numbers rounded, integer strings accepted, bools 0/1; else null. */
export function parseId(v: unknown): number | null {
  let n: number;
  if (typeof v === "number") n = Math.round(v);
  else if (typeof v === "boolean") n = v ? 1 : 0;
  else if (typeof v === "string" && /^\s*[+-]?\d+\s*$/.test(v)) n = Number(v.trim());
  else return null;
  if (!Number.isFinite(n) || n < -2147483648 || n > 2147483647) return null;
  return n;
}

export const NULL_UUID = "00000000-0000-0000-0000-000000000000";

/** QUuid(string): braces optional, any case; an invalid string is the null uuid. Without braces, lower case. */
export function parseUuid(v: string): string {
  const m = /^\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?$/.exec(v);
  if (!m || (v.startsWith("{") !== v.endsWith("}"))) return NULL_UUID;
  return m[1]!.toLowerCase();
}

/** QVariant::toString of a JSON value: strings as they are, numbers and bools written out, others empty. */
export function toQString(v: unknown): string {
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return "";
}

/**
 * The QJsonParseError text closest to what JavaScriptCore's JSON.parse said. Qt's parser names
 * its errors in a fixed list ("unterminated string", "illegal value", ...); we map onto that list.
 */
export function qtJsonError(text: string, jscMessage: string): string {
  const m = jscMessage.toLowerCase();
  if (m.includes("unterminated string")) return "unterminated string";
  if (m.includes("escape")) return "invalid escape sequence";
  if (text.trim().length === 0) return "illegal value";
  if (m.includes("unexpected eof") || m.includes("expected '}'")) return "unterminated object";
  if (m.includes("expected ']'")) return "unterminated array";
  if (m.includes("expected ':'")) return "missing name separator";
  if (m.includes("unable to parse json string") || m.includes("unexpected content at end") || m.includes("after json")) return "garbage at the end of the document";
  if (m.includes("number")) return "illegal number";
  return "illegal value";
}

// ---------------------------------------------------------------------------------------------
// Requests

export type Method = "RemoteProxy.Hello" | "RemoteProxy.Introspect" | "Authentication.Authenticate";

export interface AuthenticateParams {
  uuid: string;
  name: string;
  token: string;
  /** "" for the legacy (no nonce) pairing. */
  nonce: string;
}

export type Request =
  | { kind: "hello"; id: number }
  | { kind: "introspect"; id: number }
  | { kind: "authenticate"; id: number; params: AuthenticateParams }
  /** Answer `line`, then kill the connection. */
  | { kind: "error"; id: number; line: string };

const PARAM_TEMPLATES: Record<Method, Record<string, string>> = {
  "Authentication.Authenticate": { name: "String", "o:nonce": "String", token: "String", uuid: "String" },
  "RemoteProxy.Hello": {},
  "RemoteProxy.Introspect": {},
};

const NAMESPACES: Record<string, readonly string[]> = {
  Authentication: ["Authenticate"],
  RemoteProxy: ["Hello", "Introspect"],
};

function validateParams(template: Record<string, string>, params: Record<string, unknown>): string | null {
  for (const key of Object.keys(template).sort()) {
    const stripped = key.replace(/^o:/, "");
    if (!key.startsWith("o:") && !(stripped in params)) return `Missing key ${key} in ${indented(params)}`;
  }
  for (const k of Object.keys(params).sort()) {
    if (!(k in template) && !(`o:${k}` in template)) return `Forbidden key "${k}" in ${indented(params)}`;
  }
  return null;
}

/** One packet (latin1 bytes as the Framer returns them) → what to do with it. */
export function parseRequest(packet: string): Request {
  const text = Buffer.from(packet, "latin1").toString("utf8");
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return { kind: "error", id: -1, line: errorLine(-1, `Failed to parse JSON data: ${qtJsonError(text, (e as Error).message)}`) };
  }
  const msg = doc !== null && typeof doc === "object" && !Array.isArray(doc) ? (doc as Record<string, unknown>) : {};
  const id = parseId(msg.id);
  if (id === null) return { kind: "error", id: -1, line: errorLine(-1, "Error parsing command. Missing 'id'") };
  const method = toQString(msg.method);
  const parts = method.split(".");
  if (parts.length !== 2) return { kind: "error", id, line: errorLine(id, `Error parsing method. Got: '${method}'', Expected: 'Namespace.method'`) };
  const methods = Object.hasOwn(NAMESPACES, parts[0]!) ? NAMESPACES[parts[0]!]! : undefined;
  if (!methods) return { kind: "error", id, line: errorLine(id, "No such namespace") };
  if (!methods.includes(parts[1]!)) return { kind: "error", id, line: errorLine(id, "No such method") };
  const raw = msg.params;
  const params = raw !== null && typeof raw === "object" && !Array.isArray(raw) ? (raw as Record<string, unknown>) : {};
  const problem = validateParams(PARAM_TEMPLATES[method as Method], params);
  if (problem) return { kind: "error", id, line: errorLine(id, `Invalid params: ${problem}`) };
  if (method === "RemoteProxy.Hello") return { kind: "hello", id };
  if (method === "RemoteProxy.Introspect") return { kind: "introspect", id };
  return {
    kind: "authenticate",
    id,
    params: { uuid: toQString(params.uuid), name: toQString(params.name), token: toQString(params.token), nonce: toQString(params.nonce) },
  };
}

// ---------------------------------------------------------------------------------------------
// Answers

export function helloLine(id: number, name: string): string {
  return successLine(id, { apiVersion: API_VERSION, name, server: SERVER, version: SERVER_VERSION });
}

export function authenticateLine(id: number, error: AuthError): string {
  return successLine(id, { authenticationError: error });
}

export function tunnelEstablishedLine(id: number, peer: { name: string; uuid: string }): string {
  return notificationLine(id, "RemoteProxy.TunnelEstablished", { name: peer.name, uuid: peer.uuid });
}

/** RemoteProxy.Introspect's params: the v1 methods, notification and types, as upstream describes them. */
export const INTROSPECTION = {
  methods: {
    "Authentication.Authenticate": {
      description:
        "Authenticate this connection. The returned AuthenticationError informs about the result. If the authentication was not successfull, the server will close the connection immediatly after sending the error response. The given id should be a unique id the other tunnel client can understand. Once the authentication was successfull, you can wait for the RemoteProxy.TunnelEstablished notification. If you send any data before getting this notification, the server will close the connection. If the tunnel client does not show up within 10 seconds, the server will close the connection.",
      params: PARAM_TEMPLATES["Authentication.Authenticate"],
      returns: { authenticationError: "$ref:AuthenticationError" },
    },
    "RemoteProxy.Hello": {
      description: "Once connected to this server, a client can get information about the server by saying Hello. The response informs the client about this proxy server.",
      params: {},
      returns: { apiVersion: "String", name: "String", server: "String", version: "String" },
    },
    "RemoteProxy.Introspect": {
      description: "Introspect this API.",
      params: {},
      returns: { methods: "Object", notifications: "Object", types: "Object" },
    },
  },
  notifications: {
    "RemoteProxy.TunnelEstablished": {
      description:
        "Emitted whenever the tunnel has been established successfully. This is the last message from the remote proxy server! Any following data will be from the other tunnel client until the connection will be closed. The parameter contain some information about the other tunnel client.",
      params: { name: "String", uuid: "String" },
    },
  },
  types: {
    AuthenticationError: [...AUTH_ERRORS],
    BasicType: ["Uuid", "String", "Int", "UInt", "Double", "Bool", "Variant", "Object"],
  },
};

export function introspectLine(id: number): string {
  return successLine(id, INTROSPECTION);
}
