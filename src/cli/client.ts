// The CLI's HTTP client for the running server's API.
import { join } from "node:path";
import { defaultDataDir } from "../datadir.ts";
import { UserError } from "../errors.ts";

export const clientOptions = {
  server: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

export class ApiClient {
  /** `tokenOwner`: the uid owning the token file the token was read from (none: given). */
  constructor(readonly base: string, readonly token?: string, readonly tokenOwner?: number) {}

  static fromEnv(server?: string): ApiClient {
    const base = (server ?? Deno.env.get("NETROOT_SERVER") ?? "http://127.0.0.1:8080").replace(
      /\/$/,
      "",
    );
    const token = Deno.env.get("NETROOT_TOKEN");
    if (token) return new ApiClient(base, token);
    const file = join(defaultDataDir(), "token");
    try {
      return new ApiClient(base, Deno.readTextFileSync(file).trim(), Deno.statSync(file).uid!);
    } catch {
      return new ApiClient(base); // read-only commands work without it
    }
  }

  /**
   * Refuses to send the data dir's token to a port of this machine held by another user than the
   * token file's owner. The file is 0600 so that no other user of the server machine has the token
   * (with it, a local client writes any file as root: image cp out), but any user may listen on
   * 127.0.0.1:8080 while netroot does not (stopped, restarting, or on another port): root's next
   * `netroot node ls` handed that user the token. The same went for a server URL naming this
   * machine otherwise (its host name, its boot network address, 0.0.0.0) and a user's listener
   * on the wildcard address: the address a connection to the URL reaches is looked at too.
   */
  async #checkListener(): Promise<void> {
    if (this.tokenOwner === undefined) return;
    const url = new URL(this.base);
    // Loopback is answered from the tables alone; any other name is connected to once.
    const ip = loopbackAddress(url) ?? await localAddressOf(url, this.base);
    const other = ip === undefined
      ? undefined
      : listenersAt(ip, portOf(url)).find((uid) => uid !== this.tokenOwner);
    if (other === undefined) return;
    throw new UserError(
      `refusing to send the API token to ${this.base}: the program listening there runs as uid ` +
        `${other}, not as the owner of the token file (uid ${this.tokenOwner}), so it is not ` +
        "netroot; set --server or NETROOT_SERVER to the server's address",
    );
  }

  /** The API's raw response (JSON body, token when there is one); an unreachable server is a
   *  UserError (503). */
  async fetch(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<Response> {
    if (this.token) await this.#checkListener();
    try {
      return await fetch(`${this.base}/api/v1${path}`, {
        method,
        headers: {
          ...(body !== undefined ? { "content-type": "application/json" } : {}),
          ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
          ...headers,
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw unreachable(this.base, e);
    }
  }

  async request<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.fetch(method, path, body);
    const text = await res.text();
    let data: unknown = undefined;
    try {
      data = text ? JSON.parse(text) : undefined;
    } catch {
      data = text;
    }
    if (!res.ok) {
      const msg = (data as { error?: string })?.error ?? `HTTP ${res.status} ${text}`;
      throw new UserError(msg, res.status as 400);
    }
    return data as T;
  }
  get<T = unknown>(path: string) {
    return this.request<T>("GET", path);
  }
  post<T = unknown>(path: string, body?: unknown) {
    return this.request<T>("POST", path, body ?? {});
  }
  patch<T = unknown>(path: string, body: unknown) {
    return this.request<T>("PATCH", path, body);
  }
  delete<T = unknown>(path: string) {
    return this.request<T>("DELETE", path);
  }
}

/** `ip` as the kernel's socket tables write it (/proc/net/tcp, tcp6): IPv4 as one 32-bit word,
 *  IPv6 as four, each in the machine's (little-endian) byte order; an IPv4 address also as the
 *  IPv4-mapped IPv6 one a dual-stack socket shows, an IPv4-mapped one also as IPv4. */
function tableAddresses(ip: string): string[] {
  const word = (bytes: number[]) =>
    bytes.map((b) => b.toString(16).padStart(2, "0")).reverse().join("").toUpperCase();
  const v4 = /^(?:::ffff:)?(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(ip)?.[1];
  if (v4) {
    const w = word(v4.split(".").map(Number));
    return [w, `0000000000000000FFFF0000${w}`];
  }
  const groups = (s: string) => s ? s.split(":").map((g) => parseInt(g, 16)) : [];
  const [head, tail] = ip.replace(/%.*$/, "").split("::").map(groups); // "%eth0": a scope
  const all = tail ? [...head, ...Array(8 - head.length - tail.length).fill(0), ...tail] : head;
  const bytes = all.flatMap((x) => [x >> 8, x & 255]);
  return [[0, 4, 8, 12].map((i) => word(bytes.slice(i, i + 4))).join("")];
}

/** A URL's port, its scheme's when it names none. */
function portOf(url: URL): number {
  return Number(url.port || (url.protocol === "https:" ? 443 : 80));
}

/** The address a loopback `url` names (literally, or as localhost), else undefined. */
function loopbackAddress(url: URL): string | undefined {
  const host = url.hostname; // "[::1]" for IPv6
  if (host === "localhost") return "127.0.0.1";
  if (/^127(\.\d{1,3}){3}$/.test(host)) return host;
  return host === "[::1]" ? "::1" : undefined;
}

function unreachable(base: string, e: unknown): UserError {
  return new UserError(
    `cannot reach the netroot server at ${base} (${(e as Error).message}); ` +
      "is `netroot serve` running? (set --server or NETROOT_SERVER)",
    503,
  );
}

/**
 * The address of this machine a connection to `url` reaches (whatever names it: a host name, an
 * address of any interface, 0.0.0.0), learnt by connecting once; undefined when it is another
 * machine's. A connection that fails is the server unreachable, the token not sent: a listener
 * that resets it at once (another user's) got the token in the next one.
 */
async function localAddressOf(url: URL, base: string): Promise<string | undefined> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({
      hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: portOf(url),
    });
  } catch (e) {
    throw unreachable(base, e);
  }
  const ip = conn.remoteAddr.hostname.replace(/^::ffff:(?=\d+\.)/i, "").replace(/%.*$/, "");
  conn.close();
  const local = /^(127\.|0\.0\.0\.0$)/.test(ip) || ip === "::1" || ip === "::" ||
    Deno.networkInterfaces().some((i) => i.address.replace(/%.*$/, "") === ip);
  return local ? ip : undefined;
}

/**
 * The uids of the sockets listening on this machine at `ip`'s `port` (or a wildcard address's,
 * IPv4 and IPv6), from the kernel's tables, the one that accepts a connection there among them;
 * none when the tables cannot be read. The listeners, not the connection made to learn the
 * address: a listener that closed that connection at once left nothing of it in the tables to
 * look at, and got the token in the next one.
 */
function listenersAt(ip: string, port: number): number[] {
  const addresses = new Set(["00000000", "0".repeat(32), ...tableAddresses(ip)]);
  const uids: number[] = [];
  try {
    for (const f of socketTable()) {
      const [address, hexPort] = f[1].split(":");
      if (f[3] === "0A" && parseInt(hexPort, 16) === port && addresses.has(address)) {
        uids.push(Number(f[7]));
      }
    }
  } catch {
    return [];
  }
  return uids;
}

/** The kernel's TCP sockets of this network namespace, IPv4 and IPv6, each line's fields:
 *  sl local_address rem_address st tx:rx tr:when retrnsmt uid … (st 0A: LISTEN). */
function* socketTable(): Generator<string[]> {
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of Deno.readTextFileSync(table).split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length > 7) yield f;
    }
  }
}

/** The JSON objects of an NDJSON stream (image import and build: progress or log lines, then
 *  {image} or {error}), each as its line arrives. */
export async function* ndjsonLines(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<Record<string, unknown>> {
  let rest = "";
  for await (const chunk of body.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop()!;
    for (const line of lines) if (line) yield JSON.parse(line);
  }
}
