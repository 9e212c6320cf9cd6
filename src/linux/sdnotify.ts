// sd_notify(3) without libsystemd: one datagram to the AF_UNIX socket named in $NOTIFY_SOCKET
// (a path, or "@name" for the abstract namespace). Deno's unix datagram sockets must be bound to
// a path of their own and cannot reach abstract names, so this is a libc socket + sendto.
import { check, enc, openLibc } from "./libc.ts";

const AF_UNIX = 1, SOCK_DGRAM = 2, SOCK_CLOEXEC = 0o2000000, MSG_NOSIGNAL = 0x4000;
/** sizeof(sockaddr_un.sun_path) */
const SUN_PATH = 108;

let lib: ReturnType<typeof load> | undefined;
function load() {
  return openLibc(
    {
      socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
      sendto: {
        parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"],
        result: "isize",
      },
      close: { parameters: ["i32"], result: "i32" },
    } as const,
  ).symbols;
}

/** sockaddr_un for a NOTIFY_SOCKET value, and its length (abstract names count no trailing NUL). */
export function notifyAddress(socket: string): { addr: Uint8Array<ArrayBuffer>; len: number } {
  const abstract = socket.startsWith("@");
  const path = enc.encode(abstract ? socket.slice(1) : socket);
  if (!socket.startsWith("/") && !abstract) {
    throw new Error(`NOTIFY_SOCKET is neither a path nor an abstract name: ${socket}`);
  }
  if (path.length + 1 > SUN_PATH) throw new Error(`NOTIFY_SOCKET too long: ${socket}`);
  const addr = new Uint8Array(2 + SUN_PATH);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(path, abstract ? 3 : 2); // abstract: sun_path[0] = NUL, then the name
  return { addr, len: 2 + (abstract ? 1 + path.length : path.length + 1) };
}

/**
 * Sends `state` (e.g. "READY=1", "STOPPING=1", "WATCHDOG=1", "STATUS=…") to the service manager.
 * Returns false when not started by one (no NOTIFY_SOCKET). A failed send throws: a service
 * manager that does not hear READY would time the start out, which must show in the log.
 */
export function sdNotify(state: string, socket = Deno.env.get("NOTIFY_SOCKET")): boolean {
  if (!socket) return false;
  const { addr, len } = notifyAddress(socket);
  const c = (lib ??= load());
  const fd = check("socket", c.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  try {
    const msg = enc.encode(state);
    check("sendto", c.sendto(fd, msg, BigInt(msg.length), MSG_NOSIGNAL, addr, len), socket);
  } finally {
    c.close(fd);
  }
  return true;
}

/** Half of $WATCHDOG_USEC in milliseconds when the watchdog is on for this process, else 0
 *  (WATCHDOG_PID, when set, must be us: the variable may be inherited by a child). */
export function watchdogIntervalMs(env = Deno.env.toObject(), pid = Deno.pid): number {
  const usec = Number(env.WATCHDOG_USEC);
  if (!Number.isFinite(usec) || usec <= 0) return 0;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== pid) return 0;
  return Math.max(1, Math.floor(usec / 2000));
}
