// The figures `deno task bench --check` holds to a floor. A bench prints each one as a line
//   RATIO <name> <value> floor <floor>
// (besides its human-readable table); bench/run.ts collects them and fails the check when a value
// is under its floor. Ratios are "higher is better": netroot's rate over the peer's, or the
// target's time over netroot's.

/** Whether the bench was asked for its quick variant (fewer rounds; what CI runs). */
export const quick = Deno.args.includes("--quick");

export function ratio(name: string, value: number, floor: number): void {
  console.log(`RATIO ${name} ${value.toFixed(3)} floor ${floor}`);
}

export interface Ratio {
  name: string;
  value: number;
  floor: number;
}

/** The RATIO lines of a bench's output. */
export function parseRatios(out: string): Ratio[] {
  return [...out.matchAll(/^RATIO (\S+) ([\d.]+) floor ([\d.]+)$/gm)].map((m) => ({
    name: m[1],
    value: Number(m[2]),
    floor: Number(m[3]),
  }));
}
