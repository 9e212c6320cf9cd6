// PLACEHOLDER — replaced by its owner; signature is the contract.
import type { Context, Service } from "../context.ts";
export function startVnodes(_ctx: Context): Promise<Service> {
  return Promise.resolve({ name: "startVnodes", close: () => Promise.resolve() });
}
