// Request bodies of the routes open to anyone on the boot network (a node's report, the
// dashboard's login): read with textUpTo, within a size, a deadline, and a number read at once,
// in all and per address (`bodyLimits`). A body under way holds ~170 KiB of the server (Deno's
// read buffers) for as long as its sender likes. The counts are the process's, as the memory is.
import type { Context as HonoContext } from "hono";
import { Shares } from "./shares.ts";

/** The sender's address as Deno.serve saw it, loopback included (rate limits' key). */
export function sourceOf(c: HonoContext): string | undefined {
  return (c.env as Deno.ServeHandlerInfo<Deno.NetAddr> | undefined)?.remoteAddr?.hostname;
}

/** Why a request body was not read: it is larger than allowed, too slow, or too many are being
 *  read already. */
export class BodyRefusal {
  constructor(readonly status: 408 | 413 | 503, readonly message: string) {}
}

/** Each body is a few hundred bytes sent at once: 10 s is plenty. */
export const bodyLimits = { deadlineMs: 10_000, readers: 256, readersPerSource: 8 };

const bodyReaders = new Shares();
let bodyReadersInAll = 0;

/** The request body as text, at most `max` bytes of it, within `bodyLimits` (`source`: the
 *  sender's address, for its share of the readers). */
export async function textUpTo(
  req: Request,
  max: number,
  source = "",
): Promise<string | BodyRefusal> {
  const tooLarge = new BodyRefusal(413, `request body larger than ${max} bytes`);
  if (Number(req.headers.get("content-length") ?? 0) > max) return tooLarge;
  if (!req.body) return "";
  if (
    bodyReadersInAll >= bodyLimits.readers ||
    !bodyReaders.take(source, bodyLimits.readersPerSource)
  ) {
    return new BodyRefusal(503, "too many request bodies under way: try again later");
  }
  bodyReadersInAll++;
  const reader = req.body.getReader();
  const tooSlow = () =>
    new BodyRefusal(408, `request body not received within ${bodyLimits.deadlineMs / 1000} s`);
  let late = false;
  const deadline = setTimeout(() => {
    late = true;
    reader.cancel().catch(() => {});
  }, bodyLimits.deadlineMs);
  try {
    const chunks: Uint8Array<ArrayBuffer>[] = [];
    let size = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (late) return tooSlow();
      if (done) break;
      size += value.length;
      if (size > max) {
        reader.cancel().catch(() => {});
        return tooLarge;
      }
      chunks.push(value as Uint8Array<ArrayBuffer>);
    }
    return await new Blob(chunks).text();
  } catch (e) {
    if (late) return tooSlow();
    throw e;
  } finally {
    clearTimeout(deadline);
    bodyReadersInAll--;
    bodyReaders.give(source);
  }
}
