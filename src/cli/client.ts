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
  constructor(readonly base: string, readonly token?: string) {}

  static fromEnv(server?: string): ApiClient {
    const base = (server ?? Deno.env.get("NETROOT_SERVER") ?? "http://127.0.0.1:8080").replace(
      /\/$/,
      "",
    );
    let token = Deno.env.get("NETROOT_TOKEN");
    if (!token) {
      try {
        token = Deno.readTextFileSync(join(defaultDataDir(), "token")).trim();
      } catch { /* read-only commands work without it */ }
    }
    return new ApiClient(base, token);
  }

  async request<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.base}/api/v1${path}`, {
        method,
        headers: {
          ...(body !== undefined ? { "content-type": "application/json" } : {}),
          ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
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
