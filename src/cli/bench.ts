// PLACEHOLDER — replaced by its owner; signature is the contract.
export function run(_args: string[]): Promise<number> {
  return Promise.reject(new Error("not yet built"));
}
