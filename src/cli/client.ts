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
   * on the wildcard address: the socket that accepts a connection to the URL is looked at too.
   */
  async #checkListener(): Promise<void> {
    if (this.tokenOwner === undefined) return;
    const url = new URL(this.base);
    const notOwner = (uid?: number) => uid !== undefined && uid !== this.tokenOwner;
    // Loopback is answered from the tables alone; any other name is connected to once.
    const uids = loopbackListeners(url) ?? [await acceptingUid(url)];
    const other = uids.find(notOwner);
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
      throw new UserError(
        `cannot reach the netroot server at ${this.base} (${(e as Error).message}); ` +
          "is `netroot serve` running? (set --server or NETROOT_SERVER)",
        503,
      );
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

/**
 * The uids of the sockets listening where a loopback `url` leads (its address or a wildcard one,
 * IPv4 and IPv6), from the kernel's tables; undefined for a URL that is not loopback, or where the
 * tables cannot be read.
 */
function loopbackListeners(url: URL): number[] | undefined {
  const host = url.hostname; // "[::1]" for IPv6
  const v4 = host === "localhost" ? "127.0.0.1" : /^127(\.\d{1,3}){3}$/.test(host) ? host : "";
  if (!v4 && host !== "[::1]") return undefined;
  const port = portOf(url);
  const addresses = new Set(["00000000", "0".repeat(32)]); // the wildcards
  if (v4) { for (const a of tableAddresses(v4)) addresses.add(a); }
  if (host !== v4) addresses.add(tableAddresses("::1")[0]);
  const uids: number[] = [];
  try {
    for (const f of socketTable()) {
      const [address, hexPort] = f[1].split(":");
      if (f[3] === "0A" && parseInt(hexPort, 16) === port && addresses.has(address)) {
        uids.push(Number(f[7]));
      }
    }
  } catch {
    return undefined;
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

/**
 * The uid of the socket that accepts a connection to `url` when that socket is on this machine
 * (whatever names it: a host name, an address of any interface, 0.0.0.0), found by connecting
 * once and looking for the other end in the kernel's tables (the accepted socket, or the request
 * still waiting to be, carries its listener's uid); undefined when the other end is elsewhere,
 * nothing answers (fetch then says so), or the tables cannot be read.
 */
async function acceptingUid(url: URL): Promise<number | undefined> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({
      hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: portOf(url),
    });
  } catch {
    return undefined;
  }
  try {
    const endpoints = (a: Deno.NetAddr) =>
      new Set(
        tableAddresses(a.hostname).map((h) =>
          `${h}:${a.port.toString(16).padStart(4, "0").toUpperCase()}`
        ),
      );
    const theirs = endpoints(conn.remoteAddr), ours = endpoints(conn.localAddr);
    for (const f of socketTable()) {
      // 01: established (accepted, or in the accept queue); 03: the handshake's last ACK on its way.
      if ((f[3] === "01" || f[3] === "03") && theirs.has(f[1]) && ours.has(f[2])) {
        return Number(f[7]);
      }
    }
  } catch {
    return undefined;
  } finally {
    conn.close();
  }
  return undefined;
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
