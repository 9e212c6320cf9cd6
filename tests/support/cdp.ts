// A real headless Chromium driven over the DevTools protocol (a websocket, no library): open a
// page, run script in it, wait for what it shows, read its cookies, take screenshots.
import assert from "node:assert/strict";

export const chromiumPath = "/usr/bin/chromium";
export const haveChromium = (() => {
  try {
    return Deno.statSync(chromiumPath).isFile;
  } catch {
    return false;
  }
})();

/** A cookie as the browser holds it (DevTools Network.Cookie). */
export interface Cookie {
  name: string;
  value: string;
  path: string;
  /** Seconds since the epoch. */
  expires: number;
  httpOnly: boolean;
  secure: boolean;
  sameSite?: "Strict" | "Lax" | "None";
}

type Pending = { resolve(v: unknown): void; reject(e: Error): void };

export class Page {
  #ws: WebSocket;
  #next = 1;
  #pending = new Map<number, Pending>();
  /** Uncaught exceptions and logged errors of the page (Content-Security-Policy refusals
   *  included), for assertions. */
  readonly errors: string[] = [];
  readonly closed: Promise<void>;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    this.closed = new Promise((r) => ws.addEventListener("close", () => r()));
    ws.addEventListener("message", (m) => {
      const msg = JSON.parse(m.data as string);
      if (msg.id !== undefined) {
        const p = this.#pending.get(msg.id);
        this.#pending.delete(msg.id);
        if (msg.error) p?.reject(new Error(`${msg.error.message} ${msg.error.data ?? ""}`));
        else p?.resolve(msg.result);
      } else if (msg.method === "Runtime.exceptionThrown") {
        this.errors.push(msg.params.exceptionDetails?.exception?.description ?? "exception");
      } else if (
        msg.method === "Log.entryAdded" && msg.params.entry.level === "error" &&
        msg.params.entry.source !== "network" // a 404 /favicon.ico
      ) {
        this.errors.push(`${msg.params.entry.source}: ${msg.params.entry.text}`); // CSP refusals
      }
    });
  }

  static async connect(url: string): Promise<Page> {
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => {
      ws.addEventListener("open", resolve);
      ws.addEventListener("error", () => reject(new Error(`cannot connect to ${url}`)));
    });
    const page = new Page(ws);
    await page.send("Page.enable");
    await page.send("Runtime.enable");
    await page.send("Network.enable");
    await page.send("Log.enable");
    return page;
  }

  send<T = unknown>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    const id = this.#next++;
    const { promise, resolve, reject } = Promise.withResolvers<unknown>();
    this.#pending.set(id, { resolve, reject });
    this.#ws.send(JSON.stringify({ id, method, params }));
    return promise as Promise<T>;
  }

  /** The value of a JavaScript expression in the page (promises awaited). */
  async eval<T = unknown>(expression: string): Promise<T> {
    const r = await this.send<{
      result: { value?: unknown };
      exceptionDetails?: { exception?: { description?: string } };
    }>("Runtime.evaluate", {
      expression,
      awaitPromise: true,
      returnByValue: true,
    });
    if (r.exceptionDetails) {
      throw new Error(`in page: ${r.exceptionDetails.exception?.description ?? expression}`);
    }
    return r.result.value as T;
  }

  /** Waits until `expression` is truthy in the page; returns its value. */
  async waitFor<T = unknown>(expression: string, what: string, timeoutMs = 30_000): Promise<T> {
    const until = Date.now() + timeoutMs;
    let last: unknown;
    while (Date.now() < until) {
      try {
        last = await this.eval(expression);
        if (last) return last as T;
      } catch (e) {
        last = e;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`timed out waiting for ${what} (last: ${String(last)})`);
  }

  async goto(url: string): Promise<void> {
    await this.send("Page.navigate", { url });
    await this.waitFor("document.readyState === 'complete'", `load of ${url}`);
  }

  /** A PNG of the page, written to `path`; returns its bytes. */
  async screenshot(path: string): Promise<Uint8Array> {
    const r = await this.send<{ data: string }>("Page.captureScreenshot", { format: "png" });
    const bytes = Uint8Array.from(atob(r.data), (c) => c.charCodeAt(0));
    await Deno.writeFile(path, bytes);
    return bytes;
  }

  async cookies(url: string): Promise<Cookie[]> {
    return (await this.send<{ cookies: Cookie[] }>("Network.getCookies", { urls: [url] })).cookies;
  }

  close(): void {
    this.#ws.close();
  }
}

export class Browser {
  private constructor(
    private child: Deno.ChildProcess,
    private profile: string,
    readonly port: number,
  ) {}

  static async launch(): Promise<Browser> {
    const profile = await Deno.makeTempDir({ prefix: "nr-cdp-" });
    // In a process group of its own (setsid): its helper processes (zygote, renderers, GPU)
    // outlive its main one for a while, and went on writing the profile after it was removed.
    const child = new Deno.Command("setsid", {
      args: [
        chromiumPath,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1280,900",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        `--user-data-dir=${profile}`,
        "about:blank",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    // Chromium writes its DevTools port into the profile once it listens.
    const until = Date.now() + 30_000;
    let port = 0;
    while (!port && Date.now() < until) {
      try {
        port = Number((await Deno.readTextFile(`${profile}/DevToolsActivePort`)).split("\n")[0]);
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const browser = new Browser(child, profile, port);
    if (!port) {
      await browser.close();
      throw new Error("chromium did not open its DevTools port");
    }
    return browser;
  }

  /** The first page (about:blank at launch). */
  async page(): Promise<Page> {
    const targets = await (await fetch(`http://127.0.0.1:${this.port}/json/list`)).json() as {
      type: string;
      webSocketDebuggerUrl: string;
    }[];
    const page = targets.find((t) => t.type === "page");
    assert.ok(page, "chromium has a page");
    return Page.connect(page.webSocketDebuggerUrl);
  }

  async close(): Promise<void> {
    const group = -this.child.pid;
    const signal = (sig: Deno.Signal) => {
      try {
        Deno.kill(group, sig);
        return true;
      } catch {
        return false; // the group is gone
      }
    };
    signal("SIGTERM");
    await this.child.status;
    // Every process of the group gone before its profile goes: a helper still writing it made
    // the removal fail, or made the profile again after it, one left in /tmp every few launches.
    for (let i = 0; signal("SIGCONT"); i++) {
      if (i === 30) signal("SIGKILL");
      await new Promise((r) => setTimeout(r, 100));
    }
    for (let i = 0;; i++) {
      try {
        return await Deno.remove(this.profile, { recursive: true });
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return;
        if (i >= 50) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
}

/** True when `bytes` is a PNG with a non-empty image. */
export function isPng(bytes: Uint8Array): boolean {
  const sig = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (bytes.length < 33 || !sig.every((b, i) => bytes[i] === b)) return false;
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  return view.getUint32(16) > 0 && view.getUint32(20) > 0; // IHDR width, height
}
