// PLACEHOLDER — replaced by its owner; signature is the contract.
import type { Context, Service } from "./context.ts";
export function startNfs(_ctx: Context): Promise<Service> {
  return Promise.resolve({ name: "startNfs", close: () => Promise.resolve() });
}
