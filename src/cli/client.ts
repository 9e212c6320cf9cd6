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
   * Refuses to send the data dir's token to a loopback port held by another user than the token
   * file's owner. The file is 0600 so that no other user of the server machine has the token (with
   * it, a local client writes any file as root: image cp out), but any user may listen on
   * 127.0.0.1:8080 while netroot does not (stopped, restarting, or on another port): root's next
   * `netroot node ls` handed that user the token.
   */
  #checkListener(): void {
    if (this.tokenOwner === undefined) return;
    const other = loopbackListeners(new URL(this.base))?.find((uid) => uid !== this.tokenOwner);
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
    if (this.token) this.#checkListener();
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

/**
 * The uids of the sockets listening where a loopback `url` leads (its address or a wildcard one,
 * IPv4 and IPv6), from the kernel's tables; undefined for a URL that is not loopback, or where the
 * tables cannot be read.
 */
function loopbackListeners(url: URL): number[] | undefined {
  const host = url.hostname; // "[::1]" for IPv6
  const v4 = host === "localhost" ? "127.0.0.1" : /^127(\.\d{1,3}){3}$/.test(host) ? host : "";
  if (!v4 && host !== "[::1]") return undefined;
  const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
  const v4hex = (ip: string) =>
    ip.split(".").map((n) => Number(n).toString(16).padStart(2, "0")).reverse().join("")
      .toUpperCase();
  const addresses = new Set(["00000000", "0".repeat(32)]); // the wildcards
  if (v4) addresses.add(v4hex(v4)).add(`0000000000000000FFFF0000${v4hex(v4)}`);
  if (host !== v4) addresses.add("00000000000000000000000001000000"); // ::1
  const uids: number[] = [];
  try {
    for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
      for (const line of Deno.readTextFileSync(table).split("\n").slice(1)) {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid …; st 0A: LISTEN
        const f = line.trim().split(/\s+/);
        const [address, hexPort] = (f[1] ?? "").split(":");
        if (f[3] === "0A" && parseInt(hexPort, 16) === port && addresses.has(address)) {
          uids.push(Number(f[7]));
        }
      }
    }
  } catch {
    return undefined;
  }
  return uids;
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
