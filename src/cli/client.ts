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

  /** The API's raw response (JSON body, token when there is one); an unreachable server is a
   *  UserError (503). */
  async fetch(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<Response> {
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
