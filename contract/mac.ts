// MAC addresses are the node key: always stored lower-case, colon-separated.
import { UserError } from "./errors.ts";

export function normalizeMac(input: string): string {
  const hex = input.trim().toLowerCase().replace(/[:\-.]/g, "");
  if (!/^[0-9a-f]{12}$/.test(hex)) throw new UserError(`invalid MAC address: ${input}`);
  return hex.match(/../g)!.join(":");
}

export function isMac(input: string): boolean {
  return /^[0-9a-fA-F]{2}([:\-]?[0-9a-fA-F]{2}){5}$/.test(input.trim());
}

export function macBytes(mac: string): Uint8Array {
  return new Uint8Array(normalizeMac(mac).split(":").map((h) => parseInt(h, 16)));
}

export function macFromBytes(b: Uint8Array): string {
  return Array.from(b.subarray(0, 6), (x) => x.toString(16).padStart(2, "0")).join(":");
}
