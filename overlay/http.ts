// The init's HTTP client: one HTTP/1.1 request per fresh TCP connection (`Connection: close`), for
// the stage reports (POST) and the hybrid manifest (GET). Not fetch, for two reasons:
// - fetch's first call sets up an HTTP client (TLS roots included) that costs about a third of a
//   second of CPU under qemu TCG, on the boot's critical path;
// - a request that fails says at which step (connecting, waiting for the answer, reading it): a
//   node that falls back to network mode because its manifest never came must tell why.
// https goes through fetch; no other scheme is taken.

export interface HttpRequest {
  method: "GET" | "POST";
  body?: string;
  contentType?: string;
  signal: AbortSignal;
  /** The largest answer body taken; a larger one is an error (default 1 MiB). */
  maxBytes?: number;
}

export interface HttpAnswer {
  status: number;
  body: Uint8Array;
}

const maxHeadBytes = 16 << 10;
const enc = new TextEncoder(), dec = new TextDecoder();
const strictDec = new TextDecoder("utf-8", { fatal: true });

/** Fails with `HTTP <status>` unless the answer is 2xx. */
export async function httpRequest(url: string, req: HttpRequest): Promise<HttpAnswer> {
  const a = await exchange(url, req);
  if (a.status < 200 || a.status > 299) throw new Error(`HTTP ${a.status} from ${url}`);
  return a;
}

/** The answer as UTF-8 text; one that is not UTF-8 is refused, not decoded: each byte of it became
 *  U+FFFD, two bytes of the string and three when hashed again as UTF-8 (128 MiB of 0xFF, which
 *  anyone at the server's address may send for the manifest, peaked at 1.16 GiB of PID 1, where
 *  the text a manifest is takes 0.5). */
export async function httpGetText(url: string, signal: AbortSignal, maxBytes?: number) {
  const { body } = await httpRequest(url, { method: "GET", signal, maxBytes });
  try {
    return strictDec.decode(body);
  } catch {
    throw new Error(`the answer of ${new URL(url).host} is not UTF-8 text (${body.length} bytes)`);
  }
}

export async function httpPostJson(url: string, body: string, signal: AbortSignal): Promise<void> {
  await httpRequest(url, { method: "POST", body, contentType: "application/json", signal });
}

async function exchange(url: string, req: HttpRequest): Promise<HttpAnswer> {
  const u = new URL(url);
  if (u.protocol === "https:") return viaFetch(url, req);
  if (u.protocol !== "http:") throw new Error(`${url}: only http and https URLs`);
  const max = req.maxBytes ?? 1 << 20;
  const { signal } = req;
  let step = `connecting to ${u.host}`;
  if (signal.aborted) throw stepError(step, signal, signal.reason);
  const connecting = Deno.connect({
    hostname: u.hostname.replace(/^\[|\]$/g, ""),
    port: Number(u.port || 80),
  });
  let conn: Deno.TcpConn | undefined;
  const onAbort = () => conn?.close();
  let aborted: () => void = () => {};
  const abort = new Promise<never>((_, rej) => {
    aborted = () => {
      onAbort();
      rej(signal.reason);
    };
    signal.addEventListener("abort", aborted, { once: true });
  });
  try {
    try {
      conn = await Promise.race([connecting, abort]);
    } catch (e) {
      connecting.then((c) => c.close(), () => {}); // a connection that comes too late
      throw e;
    }
    step = `sending the request to ${u.host}`;
    const body = enc.encode(req.body ?? "");
    const head = `${req.method} ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\n` +
      (req.contentType ? `Content-Type: ${req.contentType}\r\n` : "") +
      (req.method === "POST" ? `Content-Length: ${body.length}\r\n` : "") +
      `Connection: close\r\n\r\n`;
    await writeAll(conn, concat([enc.encode(head), body]));
    step = `waiting for the answer of ${u.host}`;
    return await readAnswer(conn, max, (s) => step = s);
  } catch (e) {
    throw stepError(step, signal, e);
  } finally {
    signal.removeEventListener("abort", aborted);
    try {
      conn?.close();
    } catch { /* closed by the abort */ }
  }
}

/** The error of a failed step; an abort keeps the signal's name (TimeoutError). */
function stepError(step: string, signal: AbortSignal, e: unknown): Error {
  if (!signal.aborted) return new Error(`${step}: ${(e as Error).message}`);
  const r = signal.reason as Error;
  return new DOMException(`${step}: ${r?.message ?? r}`, r?.name ?? "AbortError");
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let at = 0; at < data.length;) at += await conn.write(data.subarray(at));
}

/** The status and body of an HTTP/1.x answer: framed by Content-Length, chunked, or by the end of
 *  the connection. A body cut short is an error, never a shorter answer. */
async function readAnswer(
  conn: Deno.Conn,
  max: number,
  setStep: (s: string) => void,
): Promise<HttpAnswer> {
  // What is held at once: the head, then one chunk (with its size line) or the whole body.
  const reader = new Reader(conn, maxHeadBytes + max + 1024);
  const headEnd = await reader.until(enc.encode("\r\n\r\n"), maxHeadBytes);
  if (headEnd < 0) throw new Error("no HTTP answer (connection closed or head too long)");
  const headText = dec.decode(reader.take(headEnd + 4));
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(headText)?.[1];
  if (!status) throw new Error(`no HTTP answer (${JSON.stringify(headText.slice(0, 40))})`);
  const header = (name: string) =>
    new RegExp(`\\r\\n${name}:[ \\t]*([^\\r\\n]*)`, "i").exec(headText)?.[1].trim();
  setStep(`reading the answer (HTTP ${status})`);
  const length = header("content-length");
  let body: Uint8Array;
  if (/chunked/i.test(header("transfer-encoding") ?? "")) body = await readChunked(reader, max);
  else if (length !== undefined) {
    if (!/^\d+$/.test(length)) throw new Error(`bad Content-Length ${JSON.stringify(length)}`);
    const n = Number(length);
    if (n > max) throw new Error(`answer of ${n} bytes, more than the ${max} taken`);
    reader.reserve(n);
    if (!(await reader.fill(n))) {
      throw new Error(`answer cut after ${reader.buffered} of ${n} bytes`);
    }
    body = reader.last(n);
  } else {
    do {
      if (reader.buffered > max) throw new Error(`answer of more than the ${max} bytes taken`);
    } while (await reader.more());
    body = reader.last(reader.buffered);
  }
  return { status: Number(status), body };
}

/** The body of a chunked answer, gathered in one buffer: kept as a part per chunk, an answer of
 *  1-byte chunks (6 bytes each on the wire) grew PID 1 by ~480 bytes per byte taken (485 MiB for
 *  1 MiB; 467 MiB within the 8 s of a manifest attempt, from whoever answers at the server's
 *  address: an OOM kill of PID 1, a kernel panic, on a small node). */
async function readChunked(reader: Reader, max: number): Promise<Uint8Array> {
  let body = new Uint8Array(Math.min(max, 64 << 10));
  let total = 0;
  for (;;) {
    const eol = await reader.until(enc.encode("\r\n"), 1024);
    if (eol < 0) throw new Error("chunked answer cut (no chunk size)");
    const sizeText = dec.decode(reader.take(eol + 2)).split(";")[0].trim();
    if (!/^[0-9a-fA-F]{1,8}$/.test(sizeText)) {
      throw new Error(`bad chunk size ${JSON.stringify(sizeText)}`);
    }
    const size = parseInt(sizeText, 16);
    // trailers, if any, are not read: the connection closes
    if (size === 0) return body.subarray(0, total);
    if (total + size > max) throw new Error(`answer of more than the ${max} bytes taken`);
    if (!(await reader.fill(size + 2))) throw new Error("chunked answer cut in a chunk");
    if (total + size > body.length) {
      const grown = new Uint8Array(Math.min(max, Math.max(body.length * 2, total + size)));
      grown.set(body.subarray(0, total));
      body = grown;
    }
    body.set(reader.last(size), total);
    reader.skip(size);
    total += size;
    const end = reader.take(2);
    if (end[0] !== 13 || end[1] !== 10) throw new Error("bad chunk end (no CRLF after its data)");
  }
}

/** Bytes read from a connection, kept until taken; never more than `cap` of them at once. */
class Reader {
  #buf: Uint8Array;
  #start = 0;
  #end = 0;
  constructor(private readonly conn: Deno.Conn, private readonly cap: number) {
    this.#buf = new Uint8Array(Math.min(64 << 10, cap));
  }

  get buffered(): number {
    return this.#end - this.#start;
  }

  /** Room for `n` buffered bytes, allocated once (a body of known length). */
  reserve(n: number): void {
    if (this.#buf.length - this.#start >= n) return;
    this.#resize(Math.min(Math.max(n, this.#buf.length), this.cap));
  }

  #resize(size: number): void {
    if (size === this.#buf.length) this.#buf.copyWithin(0, this.#start, this.#end);
    else {
      const next = new Uint8Array(size);
      next.set(this.#buf.subarray(this.#start, this.#end));
      this.#buf = next;
    }
    this.#end -= this.#start;
    this.#start = 0;
  }

  /** Reads once more; false at the end of the connection. Past `cap` bytes held: an error. */
  async more(): Promise<boolean> {
    if (this.#end === this.#buf.length) {
      if (this.#start > 0) this.#resize(this.#buf.length); // compact: what was taken goes
      else if (this.#buf.length >= this.cap) {
        throw new Error(`answer of more than the ${this.cap} bytes held`);
      } else this.#resize(Math.min(this.#buf.length * 2, this.cap));
    }
    const n = await this.conn.read(this.#buf.subarray(this.#end));
    if (n === null) return false;
    this.#end += n;
    return true;
  }

  /** Until `n` bytes are buffered; false if the connection ended first. */
  async fill(n: number): Promise<boolean> {
    while (this.buffered < n) if (!(await this.more())) return false;
    return true;
  }

  /** The offset (from the first buffered byte) of `needle`, reading more as needed; -1 if the
   *  connection ended or `limit` bytes came without it. */
  async until(needle: Uint8Array, limit: number): Promise<number> {
    let from = 0;
    for (;;) {
      const at = indexOf(this.#buf.subarray(this.#start, this.#end), needle, from);
      if (at >= 0) return at;
      from = Math.max(0, this.buffered - needle.length + 1);
      if (this.buffered >= limit || !(await this.more())) return -1;
    }
  }

  /** The first `n` buffered bytes (a copy), removed from the buffer. */
  take(n: number): Uint8Array {
    const out = this.#buf.slice(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }

  /** Drops the first `n` buffered bytes. */
  skip(n: number): void {
    this.#start += n;
  }

  /** The first `n` buffered bytes without a copy: valid until the next read from this Reader. */
  last(n: number): Uint8Array {
    return this.#buf.subarray(this.#start, this.#start + n);
  }
}

function indexOf(hay: Uint8Array, needle: Uint8Array, from: number): number {
  outer: for (let i = from; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
}

async function viaFetch(url: string, req: HttpRequest): Promise<HttpAnswer> {
  const max = req.maxBytes ?? 1 << 20;
  const r = await fetch(url, {
    method: req.method,
    headers: req.contentType ? { "content-type": req.contentType } : {},
    body: req.body,
    signal: req.signal,
  });
  const parts: Uint8Array[] = [];
  let total = 0;
  for await (const part of r.body ?? []) {
    total += part.length;
    // the throw ends the iteration, which cancels the body
    if (total > max) throw new Error(`answer of more than the ${max} bytes taken`);
    parts.push(part);
  }
  return { status: r.status, body: concat(parts) };
}
