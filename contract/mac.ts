// MAC addresses are the node key on both sides: the server's registry and the node's
// `netroot.mac=` (which NIC to configure). Canonical form: lower-case, colon-separated.

/** The canonical form of `input` (any common spelling: colons, dashes, dots, none), or undefined. */
export function parseMac(input: string): string | undefined {
  const hex = input.trim().toLowerCase().replace(/[:\-.]/g, "");
  if (!/^[0-9a-f]{12}$/.test(hex)) return undefined;
  return hex.match(/../g)!.join(":");
}

/** True for the colon- or dash-separated (or bare) forms a command line or a user writes. */
export function isMac(input: string): boolean {
  return /^[0-9a-fA-F]{2}([:\-]?[0-9a-fA-F]{2}){5}$/.test(input.trim());
}

/** The 6 bytes of a colon-separated MAC (a canonical one, or the kernel's). */
export function macToBytes(mac: string): Uint8Array<ArrayBuffer> {
  return new Uint8Array(mac.split(":").map((h) => parseInt(h, 16)));
}

export function macFromBytes(b: Uint8Array): string {
  return Array.from(b.subarray(0, 6), (x) => x.toString(16).padStart(2, "0")).join(":");
}
